package scheduler

import (
	"fmt"
	"sort"
	"strings"
)

// Reasons a node is rejected, as they appear in ShortfallError.Rejected.
// The free-space and topology reasons carry numbers and labels and are
// built by spaceReason and topologyReason.
const (
	ReasonUnhealthy = "unhealthy"
	ReasonDraining  = "draining"
	ReasonExcluded  = "excluded"
	ReasonHolder    = "already holds a replica"
)

// Filter is the first step of placement: it splits nodes into those that may
// receive a replica for req, sorted by ID, and the reason each of the others
// may not, keyed by node ID. rejected is never nil. Filter does not check the
// request itself; Place does.
//
// A node is checked in this order and rejected for the first failure:
// unhealthy, draining, excluded (or listed in Keep), outside the topology
// requisite, not enough free space.
func Filter(nodes []Node, req Request) (eligible []Node, rejected map[string]string) {
	excluded := setOf(req.Exclude)
	kept := setOf(req.Keep)
	rejected = make(map[string]string)
	for _, n := range nodes {
		if why := reject(n, req, excluded, kept); why != "" {
			rejected[n.ID] = why
			continue
		}
		eligible = append(eligible, n)
	}
	sort.Slice(eligible, func(i, j int) bool { return eligible[i].ID < eligible[j].ID })
	return eligible, rejected
}

// reject says why n may not receive a replica for req, or "" when it may.
func reject(n Node, req Request, excluded, kept map[string]bool) string {
	switch {
	case !n.Healthy:
		return ReasonUnhealthy
	case n.Draining:
		return ReasonDraining
	case excluded[n.ID]:
		return ReasonExcluded
	case kept[n.ID]:
		return ReasonHolder
	case !inRequisite(n.Labels, req.Requisite):
		return topologyReason(n.Labels, req.Requisite)
	case n.FreeBytes < req.SizeBytes:
		return spaceReason(req.SizeBytes, n.FreeBytes)
	}
	return ""
}

// inRequisite reports whether labels match all segments of any entry of
// requisite; an empty requisite admits every node.
func inRequisite(labels map[string]string, requisite []map[string]string) bool {
	if len(requisite) == 0 {
		return true
	}
	for _, segs := range requisite {
		if matches(labels, segs) {
			return true
		}
	}
	return false
}

// matches reports whether labels carry every segment of segs with the same
// value. An empty segs matches any labels.
func matches(labels, segs map[string]string) bool {
	for k, v := range segs {
		got, ok := labels[k]
		if !ok || got != v {
			return false
		}
	}
	return true
}

// topologyReason names the node's values for the keys the requisite uses,
// and the requisite itself: "topology: zone=b not in requisite [zone=a | zone=c]".
func topologyReason(labels map[string]string, requisite []map[string]string) string {
	keySet := make(map[string]bool)
	for _, segs := range requisite {
		for k := range segs {
			keySet[k] = true
		}
	}
	keys := sortedKeys(keySet)
	have := make([]string, len(keys))
	for i, k := range keys {
		if v, ok := labels[k]; ok {
			have[i] = k + "=" + v
		} else {
			have[i] = k + " unset"
		}
	}
	want := make([]string, len(requisite))
	for i, segs := range requisite {
		want[i] = formatSegments(segs)
	}
	return fmt.Sprintf("topology: %s not in requisite [%s]", strings.Join(have, ","), strings.Join(want, " | "))
}

// spaceReason is "needs 10GiB, has 2GiB free". The need is rounded up and
// the free space down, so the line never shows a node as big enough.
func spaceReason(need, free int64) string {
	return fmt.Sprintf("needs %s, has %s free", formatBytes(need, true), formatBytes(free, false))
}

// formatSegments renders one topology as "rack=r1,zone=a", keys sorted.
func formatSegments(segs map[string]string) string {
	parts := make([]string, 0, len(segs))
	for _, k := range sortedKeys(segs) {
		parts = append(parts, k+"="+segs[k])
	}
	return strings.Join(parts, ",")
}

func setOf(ids []string) map[string]bool {
	s := make(map[string]bool, len(ids))
	for _, id := range ids {
		s[id] = true
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
