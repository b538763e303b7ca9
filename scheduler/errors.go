package scheduler

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

var (
	// ErrShortfall means too few nodes qualify for the replicas asked. The
	// concrete error is a *ShortfallError; the CSI controller answers it with
	// ResourceExhausted.
	ErrShortfall = errors.New("not enough nodes for the replicas asked")
	// ErrInvalid means the request or snapshot itself is malformed
	// (Replicas < 1, negative SizeBytes, a node without an ID, two nodes with
	// one ID). It is a caller bug, not a capacity problem.
	ErrInvalid = errors.New("invalid placement request")
)

// ShortfallError says why placement failed: how many replicas were wanted,
// how many nodes qualified, and per node why it was rejected. It matches
// ErrShortfall with errors.Is.
type ShortfallError struct {
	Volume   string
	Wanted   int
	Eligible int
	Rejected map[string]string // node ID -> reason ("unhealthy", "draining", "needs 10GiB, has 2GiB free", "topology: zone=b not in requisite", "excluded")
}

// Error is one line naming the shortfall and each rejected node's reason,
// sorted by node ID, e.g.
//
//	volume "pg": wants 3 replicas on distinct nodes, only 2 nodes qualify; rejected: n3 (unhealthy)
func (e *ShortfallError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "volume %q: wants %d %s on distinct nodes, only %d %s",
		e.Volume, e.Wanted, plural(e.Wanted, "replica", "replicas"),
		e.Eligible, plural(e.Eligible, "node qualifies", "nodes qualify"))
	if len(e.Rejected) == 0 {
		if e.Eligible == 0 {
			b.WriteString("; no storage nodes are known")
		}
		return b.String()
	}
	ids := make([]string, 0, len(e.Rejected))
	for id := range e.Rejected {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	b.WriteString("; rejected: ")
	for i, id := range ids {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s (%s)", id, e.Rejected[id])
	}
	return b.String()
}

// Is makes errors.Is(err, ErrShortfall) true.
func (e *ShortfallError) Is(target error) bool { return target == ErrShortfall }

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
