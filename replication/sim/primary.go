// Primaries: promotion as internal/primary does it, crashes, engines
// abandoned after a panic or a hang, and the judgement of whether a
// promotion went over a rolled-back record no one could detect.

package sim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/replica"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// primary is one engine the simulation started.
type primary struct {
	eng      *replication.Engine
	epoch    uint64
	inc      int    // promotion order
	began    uint64 // event counter when its promotion began
	promised uint64 // event counter when StartEngine returned
	dead     *atomic.Bool
	session  uint64 // its lock session in the coordinator
	// abandoned: its engine panicked and may hold its locks; never closed.
	abandoned bool
	// overRollback: promoted over a rolled-back in-sync record with every
	// holder of the newest generation unreachable; it could promise (and
	// so fence) none of the replicas the primaries before it wrote to.
	overRollback bool
}

// crash stops p as a process crash would: from this instant it records
// nothing (a dead process writes no in-sync record, even though closing
// the in-process engine fails its in-flight writes and drops replicas),
// then its connections close, then its lock is free (session expiry).
func (s *simulation) crash(p *primary) {
	s.mu.Lock()
	abandoned := p.abandoned
	s.mu.Unlock()
	if abandoned {
		return
	}
	p.dead.Store(true)
	p.eng.Close()
	s.coord.release(p.session)
}

// promote makes a new primary the way internal/primary.Promote does: take
// the lock (its index is the epoch), read the in-sync record, start the
// engine over every replica with the recorded set as in sync, and hand it
// the record-writing hook. An empty record is refused (leader's
// InSyncReplicas); no record means a new volume (every replica usable).
// Keep promotion in this one function: the product's is changing.
func (s *simulation) promote(ctx context.Context) (*primary, error) {
	epoch, session := s.coord.acquire()
	dead := new(atomic.Bool)
	var recorded *wire.Membership
	if rec, ok := s.coord.read(); ok {
		recorded = &wire.Membership{Gen: rec.Gen, Replicas: rec.Replicas}
	}
	cfg := replication.EngineConfig{
		Volume: volume, Size: s.cfg.Size, Epoch: epoch, Recorded: recorded,
		Timeout: s.cfg.Timeout, ReconnectInterval: 20 * time.Millisecond,
		ProgressInterval: time.Hour, ActivityExtents: 2,
		Hook: hook{c: &s.coord, epoch: epoch, session: session, dead: dead}, Log: s.log,
	}
	for _, n := range s.nodes {
		cfg.Replicas = append(cfg.Replicas, replication.ReplicaConfig{Addr: n.addr()})
	}
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	began := s.events.Add(1)
	// The newest set written before it starts (StartEngine may record
	// its own, which must not count as a holder).
	newest := s.coord.newestRecord()
	var undetectable bool
	switch s.presetUndetectable.Load() {
	case 0:
		undetectable = s.undetectableRollback()
	case 2:
		undetectable = true
	}
	eng, err := replication.StartEngine(sctx, cfg)
	var stale *replication.StaleEpochError
	if errors.As(err, &stale) {
		// As internal/primary.Promote: holding the lock, start above the
		// replicas' promise (the lock index was reset).
		if e, ok := s.coord.raiseEpoch(session, stale.Promised); ok {
			epoch, cfg.Epoch = e, e
			cfg.Hook = hook{c: &s.coord, epoch: epoch, session: session, dead: dead}
			eng, err = replication.StartEngine(sctx, cfg)
		}
	}
	if err != nil {
		s.coord.release(session)
		return nil, fmt.Errorf("epoch %d: %w", epoch, err)
	}
	if !undetectable && s.promotedWithoutHolders(recorded, newest, eng) {
		undetectable = true
	}
	if undetectable {
		s.markUndetectable()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := &primary{eng: eng, epoch: epoch, inc: len(s.primaries) + 1, began: began, promised: s.events.Add(1), dead: dead, session: session,
		overRollback: undetectable}
	s.primaries = append(s.primaries, p)
	return p, nil
}

// promoteRetry retries promotion (each attempt a new epoch, as a node
// agent retrying the lock would) until it succeeds or attempts run out.
func (s *simulation) promoteRetry(ctx context.Context, attempts int) (*primary, error) {
	var err error
	for range attempts {
		var p *primary
		if p, err = s.promote(ctx); err == nil {
			return p, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil, err
}

func (s *simulation) tryPromote(ctx context.Context, attempts int) {
	p, err := s.promoteRetry(ctx, attempts)
	if err != nil {
		s.note("promotion failed: %v", err)
		return
	}
	s.mu.Lock()
	s.current = p
	s.mu.Unlock()
	s.note("promoted primary at epoch %d", p.epoch)
}

// engineBroken reports that p's engine panicked or hung, and abandons it:
// the schedule goes on with a new primary.
func (s *simulation) engineBroken(p *primary, what string) {
	p.dead.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current == p {
		s.current = nil
	}
	if s.zombie == p {
		s.zombie = nil
	}
	if p.abandoned {
		return
	}
	p.abandoned = true
	s.res.Problems = append(s.res.Problems, fmt.Sprintf("engine of epoch %d %s", p.epoch, what))
	s.coord.release(p.session)
}

// soleHolder reports whether n is the only replica left that holds the
// newest generation a primary recorded: the only member of that set not
// wiped since it was recorded.
func (s *simulation) soleHolder(n *node) bool {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	if cur != nil {
		// The running primary knows better than the record, which may lag
		// (a blip): its in-sync replicas hold the newest generation.
		holders := 0
		mine := false
		for _, r := range cur.eng.Status().Replicas {
			if r.State != replication.StateInSync {
				continue
			}
			if r.Addr == n.addr() {
				mine = true
			} else {
				holders++
			}
		}
		if mine && holders == 0 {
			return true
		}
	}
	// The replicas' own view: the newest generation any of them holds is
	// the current in-sync set's (a record may lag it, or be lost).
	var best uint64
	var holders []*node
	for _, m := range s.nodes {
		var fsys replica.FileSystem
		if m.fs != nil {
			fsys = m.fs
		}
		meta, err := replica.ReadMetaOn(fsys, m.dir, volume)
		if err != nil {
			continue
		}
		switch g := meta.Membership.Gen; {
		case g > best:
			best, holders = g, []*node{m}
		case g == best:
			holders = append(holders, m)
		}
	}
	if best > 0 && len(holders) == 1 && holders[0] == n {
		return true
	}
	newest := s.coord.newestRecord()
	if newest == nil || !slices.Contains(newest.Replicas, n.addr()) {
		return false
	}
	for _, m := range s.nodes {
		if m != n && m.holds(newest) {
			return false
		}
	}
	return true
}

// markUndetectable records that a primary was promoted over a rolled-back
// record no one could tell from a current one.
func (s *simulation) markUndetectable() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.res.Undetectable {
		s.res.Undetectable = true
		s.res.Schedule = append(s.res.Schedule, "promoted over a rolled-back in-sync record with every holder of the newest generation unreachable (undetectable by design)")
	}
}

// undetectableRollback reports whether the in-sync record is older than
// the newest one a primary wrote (rolled back) while every replica of that
// newest set is unreachable: a promotion now cannot tell the record from
// a current one.
func (s *simulation) undetectableRollback() bool {
	rec, ok := s.coord.read()
	newest := s.coord.newestRecord()
	if !ok || newest == nil || rec.Gen >= newest.Gen {
		return false
	}
	for _, n := range s.nodes {
		if n.holds(newest) && !n.impaired() {
			return false // a holder of the newest generation answers
		}
	}
	return true
}

// promotedWithoutHolders reports whether eng started from a record older
// than newest, the newest one a primary had written when it began (or
// from none: the record was lost)
// with none of the newest set's replicas (not wiped since) among those it
// took as in sync: it could not tell its record from a current one. The
// judgement before a promotion misses a holder that fails while the
// promotion runs (seed 408810055).
func (s *simulation) promotedWithoutHolders(rec *wire.Membership, newest *inSyncRecord, eng *replication.Engine) bool {
	var recGen uint64
	if rec != nil {
		recGen = rec.Gen
	}
	if newest == nil || recGen >= newest.Gen {
		return false
	}
	for _, r := range eng.Status().Replicas {
		for _, n := range s.nodes {
			if r.State == replication.StateInSync && n.addr() == r.Addr && n.holds(newest) {
				return false
			}
		}
	}
	return true
}
