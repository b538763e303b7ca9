// The schedule's trace and problems, and the descriptions of what a
// check found.

package sim

import (
	"bytes"
	"fmt"
	"runtime/debug"
	"strings"
	"time"
)

func (s *simulation) note(format string, args ...any) {
	line := fmt.Sprintf("%6.3fs ", time.Since(s.began).Seconds()) + fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.res.Schedule = append(s.res.Schedule, line)
	s.mu.Unlock()
	s.log.Info("sim: " + line)
}

func (s *simulation) problem(format string, args ...any) {
	s.mu.Lock()
	s.res.Problems = append(s.res.Problems, fmt.Sprintf(format, args...))
	s.mu.Unlock()
}

// names turns replica addresses into node names for the report.
func (s *simulation) names(addrs []string) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a
		for _, n := range s.nodes {
			if n.addr() == a {
				out[i] = fmt.Sprintf("node%d", n.i)
			}
		}
	}
	return out
}

// panicSite names the data-plane function a recovered panic came from.
func panicSite() string {
	var frames []string
	for _, line := range strings.Split(string(debug.Stack()), "\n") {
		if strings.Contains(line, "saddlebag/replication.") && !strings.Contains(line, "/sim.") && len(frames) < 3 {
			f := strings.TrimPrefix(strings.TrimSpace(line), "github.com/saddlebag/saddlebag/replication.")
			if i := strings.LastIndex(f, "("); i > 0 {
				f = f[:i]
			}
			frames = append(frames, f)
		}
	}
	if len(frames) == 0 {
		return "?"
	}
	return strings.Join(frames, " < ")
}

// describeDiff names, for the first few blocks where node ia's data a and
// node ib's data b differ, the version each holds and the block's history
// of ops: what reached which replica, to read beside the schedule's log.
func (s *simulation) describeDiff(ia int, a []byte, ib int, b []byte) string {
	var sb strings.Builder
	shown := 0
	for blk := int64(0); (blk+1)*blockSize <= int64(min(len(a), len(b))) && shown < 4; blk++ {
		x, y := a[blk*blockSize:(blk+1)*blockSize], b[blk*blockSize:(blk+1)*blockSize]
		if bytes.Equal(x, y) {
			continue
		}
		shown++
		fmt.Fprintf(&sb, "\n    block %d: node%d holds %s, node%d holds %s", blk, ia, describeVersion(x, blk), ib, describeVersion(y, blk))
		for _, w := range s.writers {
			if blk >= w.lo && blk < w.hi {
				for _, op := range w.hist[blk-w.lo] {
					fmt.Fprintf(&sb, "\n      writer %d %s", w.id, op)
				}
			}
		}
	}
	return sb.String()
}

// describeVersion names the version a block holds.
func describeVersion(b []byte, blk int64) string {
	zero, w, seq, ok := version(b, blk)
	switch {
	case !ok:
		return "content no write put there"
	case zero:
		return "zeroes"
	}
	return fmt.Sprintf("writer %d op %d", w, seq)
}

// diffSummary says how many blocks differ and where the first one is.
func diffSummary(a, b []byte) string {
	n, firstBlk := 0, int64(-1)
	for i := 0; i+blockSize <= len(a) && i+blockSize <= len(b); i += blockSize {
		if string(a[i:i+blockSize]) != string(b[i:i+blockSize]) {
			if firstBlk < 0 {
				firstBlk = int64(i / blockSize)
			}
			n++
		}
	}
	return fmt.Sprintf("%d blocks (first: block %d)", n, firstBlk)
}
