// The fault schedule: steps drawn from the seed, and their injection.

package sim

import (
	"context"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/saddlebag/saddlebag/replication"
)

// step is one drawn schedule step; every field is drawn for every step so
// a seed yields the same sequence whatever happens at run time.
type step struct {
	fault Fault
	node  int
	pause time.Duration
	dur   time.Duration
	frac  float64
	mask  int
}

func (s *simulation) drawSteps() []step {
	var enabled []Fault
	for _, f := range AllFaults {
		if s.cfg.Faults[f] {
			enabled = append(enabled, f)
		}
	}
	steps := make([]step, s.cfg.Steps)
	for i := range steps {
		st := step{node: s.rng.IntN(s.cfg.Replicas), pause: time.Duration(s.rng.IntN(30)) * time.Millisecond,
			dur: time.Duration(5+s.rng.IntN(int(replicaTimeout/time.Millisecond)*3/2)) * time.Millisecond, frac: s.rng.Float64(), mask: s.rng.IntN(1 << 8)}
		f := s.rng.IntN(len(enabled) + 2)
		if f < len(enabled) {
			st.fault = enabled[f]
		} // else: only workload during the pause
		steps[i] = st
	}
	return steps
}

// schedule runs the drawn steps while the writers run.
func (s *simulation) schedule(ctx context.Context) {
	time.Sleep(20 * time.Millisecond) // some data first
	for _, st := range s.drawSteps() {
		if ctx.Err() != nil {
			return
		}
		time.Sleep(st.pause)
		s.restartTrapped()
		s.mu.Lock()
		noPrimary := s.current == nil
		s.mu.Unlock()
		if noPrimary {
			s.tryPromote(ctx, 1) // the next step tries again
		}
		s.inject(ctx, st)
	}
	time.Sleep(20 * time.Millisecond)
}

// replicaFaults impair a replica.
var replicaFaults = []Fault{FaultKill, FaultPowerLoss, FaultWipe, FaultPartition, FaultHold, FaultDiskFull, FaultWipeFailover,
	FaultPromotionFault, FaultResyncPowerLoss, FaultPersistCrash}

func (s *simulation) inject(ctx context.Context, st step) {
	n := s.nodes[st.node]
	if !s.cfg.Faults[FaultAllDown] && slices.Contains(replicaFaults, st.fault) && !n.impaired() && s.lastHealthy(n) {
		return // the last healthy in-sync replica stays so
	}
	if (st.fault == FaultWipe || st.fault == FaultWipeFailover) && s.soleHolder(n) {
		// Destroying the only replica of the newest generation is a
		// second failure on top of the one that made it the only one:
		// nothing can survive that, and the product rightly refuses to
		// serve the volume then (TestWipedReplicaNeverServed).
		return
	}
	switch st.fault {
	case "":
	case FaultKill, FaultPowerLoss, FaultWipe:
		if !n.up {
			if err := s.startNode(n); err != nil {
				s.problem("restart node%d: %v", n.i, err)
				return
			}
			s.note("restart node%d", n.i)
			return
		}
		switch st.fault {
		case FaultKill:
			s.killNode(n)
			s.note("SIGKILL node%d", n.i)
		case FaultPowerLoss:
			s.powerCutOrKill(n, true, "") // a real process on real files: only a kill
		case FaultWipe:
			if s.wipeAndRestart(n) {
				s.note("wipe node%d and restart it empty", n.i)
			}
		}
	case FaultWipeFailover:
		s.mu.Lock()
		p := s.current
		s.current = nil
		s.mu.Unlock()
		if p != nil {
			s.crash(p)
		}
		if !s.wipeAndRestart(n) {
			return
		}
		s.note("crash the primary, wipe node%d and restart it empty, promote", n.i)
		s.tryPromote(ctx, 2)
	case FaultPartition:
		n.cut = !n.cut
		n.proxy.SetCut(n.cut)
		s.note("partition node%d: %v", n.i, n.cut)
	case FaultDelay:
		n.delayed = !n.delayed
		d := time.Duration(0)
		if n.delayed {
			d = time.Duration(1+int(st.frac*4)) * time.Millisecond
		}
		n.proxy.SetDelay(d)
		s.note("delay node%d up to %s per connection", n.i, d)
	case FaultHold:
		n.proxy.SetHold(true)
		n.held.Add(1)
		s.note("hold node%d's frames for %s", n.i, st.dur)
		time.AfterFunc(st.dur, func() {
			n.proxy.SetHold(false)
			n.held.Add(-1)
		})
	case FaultDiskFull:
		n.diskFull = !n.diskFull
		if err := s.setDiskFull(n, n.diskFull, int64(st.frac*64)*blockSize); err != nil {
			s.problem("disk full node%d: %v", n.i, err)
			return
		}
		s.note("disk full node%d: %v", n.i, n.diskFull)
	case FaultPrimaryCrash:
		s.mu.Lock()
		p := s.current
		s.current = nil
		s.mu.Unlock()
		if p != nil {
			s.crash(p)
			s.note("crash primary of epoch %d", p.epoch)
		}
		time.Sleep(time.Duration(st.frac * float64(50*time.Millisecond))) // the writers see no primary
		s.tryPromote(ctx, 2)
	case FaultPromotionFault:
		s.mu.Lock()
		p := s.current
		s.current = nil
		s.mu.Unlock()
		if p != nil {
			s.crash(p)
			s.note("crash primary of epoch %d", p.epoch)
		}
		// The promotion runs beside this goroutine, which changes the
		// nodes: judge the rollback here, before (node fields are this
		// goroutine's).
		preset := int32(1)
		if s.undetectableRollback() {
			preset = 2
		}
		s.presetUndetectable.Store(preset)
		defer s.presetUndetectable.Store(0)
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.tryPromote(ctx, 2)
		}()
		time.Sleep(time.Duration(st.frac * float64(30*time.Millisecond)))
		faultAt := ^uint64(0)
		if n.up {
			faultAt = s.events.Add(1)
			s.powerCutOrKill(n, st.mask&1 == 1, "during the promotion")
		}
		<-done
		// A promotion attempt begun after the fault (the first failed)
		// met the nodes as they are now: judge it again.
		s.mu.Lock()
		cur := s.current
		s.mu.Unlock()
		if cur != nil && cur.began > faultAt && s.undetectableRollback() {
			s.markUndetectable()
			s.mu.Lock()
			cur.overRollback = true
			s.mu.Unlock()
		}
	case FaultResyncPowerLoss:
		target := s.resyncing()
		if target == nil && n.up {
			// Start a resync: kill and restart a replica, then give the
			// primary a moment to reconnect.
			s.killNode(n)
			if err := s.startNode(n); err != nil {
				s.problem("restart node%d: %v", n.i, err)
				return
			}
			s.note("SIGKILL node%d and restart it", n.i)
			deadline := time.Now().Add(100 * time.Millisecond)
			for target == nil && time.Now().Before(deadline) {
				time.Sleep(2 * time.Millisecond)
				target = s.resyncing()
			}
			time.Sleep(time.Duration(st.frac * float64(10*time.Millisecond)))
		}
		if target != nil && target.up {
			s.powerCutOrKill(target, true, "while it is resynced")
		}
	case FaultPersistCrash:
		if n.fs == nil || !n.up || n.trapped {
			return
		}
		match, what := "peer-", "a peer bitmap"
		if st.mask&1 == 1 {
			match, what = "meta", "its metadata"
		}
		nth := 1 + st.mask>>1&3
		r := rand.New(rand.NewPCG(s.cfg.Seed, 1000+uint64(n.i)))
		n.trapped = true
		// The cut's event is taken at the cut: a flush issued after it
		// but before onFire runs must not count as covering what it lost.
		n.fs.ArmPowerLoss(match, nth, r, s.powerCut, func(lost int) {
			n.boots.Add(1) // it comes back from a new boot
			n.cutByTrap.Store(true)
			s.mu.Lock()
			s.powerLost = true
			s.mu.Unlock()
			s.note("power loss node%d while writing %s (%d unsynced block writes lost)", n.i, what, lost)
		})
		s.note("arm a power cut of node%d at its write #%d to %s", n.i, nth, what)
	case FaultSecondPrimary:
		s.mu.Lock()
		old, prevZombie := s.current, s.zombie
		s.mu.Unlock()
		if prevZombie != nil {
			s.crash(prevZombie)
		}
		p, err := s.promote(ctx)
		if err != nil {
			// It took the lock: the old primary's lease is gone, and the
			// lease layer fences it (Lease.Guard).
			s.mu.Lock()
			if s.current == old {
				s.current = nil
			}
			s.mu.Unlock()
			if old != nil {
				s.crash(old)
			}
			s.note("second primary failed (the old one lost its lease and stops): %v", err)
			return
		}
		s.mu.Lock()
		s.current, s.zombie = p, old
		clear(s.zombieFor)
		for w := range s.writers {
			if st.mask&(1<<w) != 0 {
				s.zombieFor[w] = true
			}
		}
		s.mu.Unlock()
		s.note("second primary at epoch %d while the old one runs on (writers %b stay with it)", p.epoch, st.mask&(1<<len(s.writers)-1))
	case FaultRecordLost:
		s.coord.loseRecord()
		s.note("in-sync record lost")
	case FaultRecordRollback:
		if rec, ok := s.coord.rollBack(st.frac); ok {
			s.note("in-sync record rolled back to epoch %d %v", rec.Epoch, s.names(rec.Replicas))
		}
	case FaultLockReset:
		s.note("lock index reset to %d", s.coord.resetLockIndex(st.frac))
	case FaultConsulBlip:
		s.coord.setBlip(true)
		s.note("consul blip for %s", st.dur)
		time.AfterFunc(st.dur, func() { s.coord.setBlip(false) })
	}
}

// restartTrapped restarts the nodes a persistcrash trap powered off, and
// forgets the traps that did not fire when called for the recovery.
func (s *simulation) restartTrapped() {
	for _, n := range s.nodes {
		if n.cutByTrap.Swap(false) {
			n.trapped = false
			s.stopNode(n)
			if err := s.startNode(n); err != nil {
				s.problem("restart node%d: %v", n.i, err)
				continue
			}
			s.note("restart node%d after its power cut", n.i)
		}
	}
}

// wipeAndRestart kills n, deletes its data and starts it empty; false
// (reported) when that failed.
func (s *simulation) wipeAndRestart(n *node) bool {
	s.killNode(n)
	if err := s.wipeNode(n); err != nil {
		s.problem("wipe node%d: %v", n.i, err)
		return false
	}
	if err := s.startNode(n); err != nil {
		s.problem("restart node%d: %v", n.i, err)
		return false
	}
	return true
}

// powerCutOrKill power-cuts n (in process, when power is true) or kills it.
func (s *simulation) powerCutOrKill(n *node, power bool, when string) {
	if power && n.fs != nil {
		s.powerCut()
		lost := n.fs.PowerLoss(s.dead)
		n.boots.Add(1) // it comes back from a new boot
		s.stopNode(n)
		s.mu.Lock()
		s.powerLost = true
		s.mu.Unlock()
		s.note("power loss node%d %s (%d unsynced block writes lost)", n.i, when, lost)
		return
	}
	s.killNode(n)
	s.note("SIGKILL node%d %s", n.i, when)
}

// resyncing returns a node the current primary is resyncing, if any.
func (s *simulation) resyncing() *node {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	if cur == nil {
		return nil
	}
	for _, r := range cur.eng.Status().Replicas {
		if r.State == replication.StateResyncing {
			for _, n := range s.nodes {
				if n.addr() == r.Addr {
					return n
				}
			}
		}
	}
	return nil
}

// lastHealthy reports whether n is the last unimpaired replica, or the
// last unimpaired one the current primary has in sync: impairing it
// would leave the volume no replica to serve from.
func (s *simulation) lastHealthy(n *node) bool {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	var inSync map[string]bool
	if cur != nil {
		inSync = map[string]bool{}
		for _, r := range cur.eng.Status().Replicas {
			if r.State == replication.StateInSync {
				inSync[r.Addr] = true
			}
		}
	}
	for _, m := range s.nodes {
		if m != n && !m.impaired() && (inSync == nil || inSync[m.addr()]) {
			return false
		}
	}
	return true
}
