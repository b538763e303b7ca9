// Recovery and the checks: what must have survived (the model of the
// device's promises), fenced and blip-failed writes, lost acknowledged
// writes and divergent replicas.

package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/saddlebag/saddlebag/replication"
)

// flushRec is a completed flush: the event it was issued at, the count
// of unflushed-write losses found then, and the primary it went through.
type flushRec struct {
	issued, losses, epoch uint64
	at                    time.Duration // when it completed, since the schedule began
}

func (s *simulation) flushed(f flushRec) {
	s.flushedMu.Lock()
	defer s.flushedMu.Unlock()
	s.flushes = append(s.flushes, f)
}

// powerCut records that a replica lost power now.
func (s *simulation) powerCut() {
	at := s.events.Add(1)
	s.flushedMu.Lock()
	defer s.flushedMu.Unlock()
	s.cuts = append(s.cuts, at)
}

// unflushedLosses counts the times any primary found its last in-sync
// replica back from a power loss with unflushed writes gone.
func (s *simulation) unflushedLosses() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, p := range s.primaries {
		n += p.eng.UnflushedLosses()
	}
	return n
}

// mustSurvive reports whether an acknowledged op must read back. Without
// a power loss, every one. After one: a FUA write, or an op a completed
// flush covers: one issued after its acknowledgement
//   - with no loss of unflushed writes found in between: one found was
//     reported (ErrUnflushedLost) to the flushes in flight and to the
//     next one, as Linux reports a writeback error once; the flushes
//     after that succeed without making the lost writes durable;
//   - through the primary that acknowledged it, or with no power cut
//     between the op's issue and the flush: a new primary makes durable
//     what the replicas it found hold; if the only replicas that held a
//     write lost power before it was flushed, no one can know it existed.
//     The op's issue, not its acknowledgement, bounds the window: a
//     replica may apply it (and reply) any time after its issue, and a
//     cut right after that reply may be counted before the writer counts
//     the acknowledgement (seed 510350150).
func (s *simulation) mustSurvive(op *opRec) bool {
	ok, _ := s.survival(op)
	return ok
}

// survival is mustSurvive with the reason, for a report.
func (s *simulation) survival(op *opRec) (bool, string) {
	s.mu.Lock()
	powerLost := s.powerLost
	s.mu.Unlock()
	if !powerLost {
		return true, " (no power was lost)"
	}
	if op.fua {
		return true, " (FUA)"
	}
	s.flushedMu.Lock()
	defer s.flushedMu.Unlock()
	for _, f := range s.flushes {
		if f.issued <= op.ackAt || f.losses != op.losses {
			continue
		}
		if f.epoch == op.epoch || !slices.ContainsFunc(s.cuts, func(c uint64) bool { return c > op.issued && c < f.issued }) {
			return true, fmt.Sprintf(" (a flush at epoch %d completed at %.3fs, issued at event %d after its ack at event %d)",
				f.epoch, f.at.Seconds(), f.issued, op.ackAt)
		}
	}
	return false, ""
}

// survivalWhy is survival's reason alone.
func (s *simulation) survivalWhy(op *opRec) string {
	_, why := s.survival(op)
	return why
}

// blipFailed counts an op that failed only because the in-sync record
// was unwritable for a moment.
func (s *simulation) blipFailed(p *primary, op *opRec, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.res.BlipWriteErrors++
	if s.res.BlipWriteErrors == 1 {
		s.res.Problems = append(s.res.Problems, fmt.Sprintf("consul blip: primary of epoch %d failed op %d: %v", p.epoch, op.seq, err))
	}
}

// checkFenced counts an acknowledgement by p of an op issued after a
// later primary finished its promotion: the later primary's promise must
// have fenced p by then.
func (s *simulation) checkFenced(p *primary, op *opRec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var by *primary // the first later primary that should have fenced p
	excused := true
	for _, q := range s.primaries {
		if q.inc > p.inc && q.promised < op.issued {
			if by == nil {
				by = q
			}
			excused = excused && q.overRollback
		}
	}
	switch {
	case by == nil:
	case excused:
		s.res.UndetectableFenced++
		if s.res.UndetectableFenced == 1 {
			s.res.Schedule = append(s.res.Schedule, fmt.Sprintf(
				"the primary of epoch %d acknowledged op %d after the primary of epoch %d, promoted over the rolled-back record, promised (undetectable by design)",
				p.epoch, op.seq, by.epoch))
		}
	default:
		s.res.FencedWritesAccepted++
		if s.res.FencedWritesAccepted <= 3 {
			s.res.Problems = append(s.res.Problems, fmt.Sprintf(
				"fenced primary (epoch %d) acknowledged op %d issued after the primary of epoch %d promised",
				p.epoch, op.seq, by.epoch))
		}
	}
}

// recoverAndCheck heals every fault, recovers as the product would, waits
// for every replica to be in sync, then checks the data.
func (s *simulation) recoverAndCheck(ctx context.Context) {
	s.coord.setBlip(false)
	s.restartTrapped()
	for _, n := range s.nodes {
		if n.fs != nil && n.trapped {
			n.fs.Disarm()
			n.trapped = false
		}
	}
	s.restartTrapped() // one may have fired before it was disarmed
	for _, n := range s.nodes {
		n.proxy.SetHold(false)
		n.proxy.SetDelay(0)
		if n.cut {
			n.proxy.SetCut(false)
		}
		n.cut, n.delayed = false, false
		if n.diskFull {
			if err := s.setDiskFull(n, false, 0); err != nil {
				s.problem("recovery: node%d: %v", n.i, err)
			}
		}
		n.diskFull = false
		if !n.up {
			if err := s.startNode(n); err != nil {
				s.problem("recovery: restart node%d: %v", n.i, err)
			}
		}
	}
	s.mu.Lock()
	cur, zombie := s.current, s.zombie
	s.zombie = nil
	s.mu.Unlock()
	if zombie != nil {
		s.crash(zombie)
	}
	// Half the schedules end with a primary crash and a fresh promotion
	// (activity-log reconciliation), the others keep the running primary.
	if cur != nil && (cur.eng.Fenced() || s.rng.IntN(2) == 0) {
		s.crash(cur)
		cur = nil
	}
	if cur == nil {
		p, err := s.promoteRetry(ctx, 40)
		if err != nil {
			s.problem("recovery: no primary could be promoted: %v", err)
			return
		}
		cur = p
		s.note("recovery: promoted primary at epoch %d", p.epoch)
	} else {
		s.note("recovery: primary of epoch %d stays", cur.epoch)
	}
	// Wait for every replica to be in sync; with none in sync the
	// engine has nothing to resync from, and waiting longer is useless.
	began := time.Now()
	deadline := began.Add(recoveryWait)
	st := cur.eng.Status()
	for st.InSync < len(s.nodes) && time.Now().Before(deadline) && !st.Fenced &&
		(st.InSync > 0 || time.Since(began) < time.Second) {
		time.Sleep(10 * time.Millisecond)
		st = cur.eng.Status()
	}
	if st.InSync < len(s.nodes) {
		var why []string
		for _, r := range st.Replicas {
			if r.State != replication.StateInSync {
				why = append(why, fmt.Sprintf("%s %s (%s)", s.names([]string{r.Addr})[0], r.State, r.Reason))
			}
		}
		s.problem("recovery: only %d of %d replicas in sync after %s: %s", st.InSync, len(s.nodes),
			time.Since(began).Round(time.Millisecond), strings.Join(why, "; "))
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := cur.eng.Flush(fctx)
	if errors.Is(err, replication.ErrUnflushedLost) {
		// The last in-sync replica lost power with writes not yet flushed:
		// reported once, as it must be; the writes it names never had a
		// completed flush, so the model does not require them.
		err = cur.eng.Flush(fctx)
	}
	if err != nil {
		s.problem("recovery: flush: %v", err)
	}
	var inSync []*node
	for _, r := range cur.eng.Status().Replicas {
		if r.State == replication.StateInSync {
			for _, n := range s.nodes {
				if n.addr() == r.Addr {
					inSync = append(inSync, n)
				}
			}
		}
	}
	s.crash(cur)
	if s.cfg.beforeCheck != nil {
		s.cfg.beforeCheck(s, inSync)
	}
	s.check(inSync)
}

// check compares the in-sync replicas with each other and with the model.
func (s *simulation) check(inSync []*node) {
	if len(inSync) == 0 {
		s.problem("check: no replica in sync")
		return
	}
	var first []byte
	lost := map[int64]string{}
	for i, n := range inSync {
		data, err := n.readData()
		if err != nil {
			s.problem("check: node%d: %v", n.i, err)
			continue
		}
		if i == 0 {
			first = data
		} else if first != nil && !bytes.Equal(first, data) {
			// Even after a promotion over a rolled-back record, which may
			// serve stale data, the in-sync replicas must be identical.
			s.mu.Lock() // an abandoned engine's goroutines may still report
			s.res.DivergentReplicas++
			s.mu.Unlock()
			s.problem("divergent: node%d differs from node%d in %s%s", n.i, inSync[0].i, diffSummary(first, data),
				s.describeDiff(inSync[0].i, first, n.i, data))
		}
		for _, w := range s.writers {
			for b := w.lo; b < w.hi; b++ {
				blk := data[b*blockSize : (b+1)*blockSize]
				if _, seen := lost[b]; seen || (i > 0 && first != nil && bytes.Equal(blk, first[b*blockSize:(b+1)*blockSize])) {
					continue // already reported, or same as a block already checked
				}
				if ok, why := w.allowed(b, blk, s.mustSurvive, s.survivalWhy); !ok {
					lost[b] = fmt.Sprintf("node%d: %s", n.i, why)
				}
			}
		}
	}
	s.mu.Lock()
	undetectable := s.res.Undetectable
	if undetectable {
		s.res.UndetectableLost = len(lost)
	} else {
		s.res.AckedWritesLost = len(lost)
	}
	s.mu.Unlock()
	if undetectable {
		if len(lost) > 0 {
			s.note("%d blocks read older versions after a promotion over a rolled-back record (undetectable by design)", len(lost))
		}
		return
	}
	shown := 0
	for b := range int64(len(first) / blockSize) {
		if why, ok := lost[b]; ok && shown < 3 {
			s.problem("lost: %s", why)
			shown++
		}
	}
	if len(lost) > shown {
		s.problem("lost: ... %d blocks in all", len(lost))
	}
}
