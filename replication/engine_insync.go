package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/saddlebag/saddlebag/internal/backoff"
	"github.com/saddlebag/saddlebag/internal/ctxutil"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// Where writes go and the in-sync set they rely on: snapshots of the
// targets, and recording a changed in-sync set on its members and
// through the hook before a write that depends on it completes.

// setTargetsLocked installs a new snapshot; the caller holds order.
func (e *Engine) setTargetsLocked(next *targetSet) {
	e.targets = next
	e.notifyLocked()
}

func (e *Engine) notifyLocked() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// rebuildLocked derives a snapshot from the peers' states, bumping the
// version when in-sync membership changed. When a member left, resyncs
// from a bitmap in progress are aborted: the member may hold a copy of
// the bitmap, and their targets must not receive a write it misses
// before they are marked with the next generation (see
// replica.Meta.TargetGen); they restart with the next attempt, from the
// bits left. A full or checksum resync goes on: it deletes every copy
// of its target's bitmap from the members before its pass, and keeps
// none, so no member can hold one that matches its target. Callers hold
// stateMu and order.
func (e *Engine) rebuildLocked() *targetSet {
	cur := e.targets
	next := &targetSet{version: cur.version}
	left := slices.ContainsFunc(cur.inSync, func(t target) bool { return t.p.state != StateInSync })
	for _, p := range e.peers {
		if left && p.state == StateResyncing && p.dirty != nil {
			p.state, p.reason = StateDropped, "an in-sync replica left during its resync: it restarts under the new in-sync set"
			if p.client != nil {
				go p.client.close()
			}
			e.log.Warn("resync aborted: an in-sync replica left; it restarts under the new in-sync set", "replica", p.cfg.Addr)
		}
		switch {
		case p.state == StateInSync:
			next.inSync = append(next.inSync, target{p, p.client})
		case p.state == StateResyncing:
			next.resyncing = append(next.resyncing, target{p, p.client})
		case p.dirty != nil:
			next.behind = append(next.behind, p.dirty)
		}
	}
	if !sameMembers(cur.inSync, next.inSync) {
		next.version++
	}
	return next
}

func sameMembers(a, b []target) bool {
	return slices.EqualFunc(a, b, func(x, y target) bool { return x.p == y.p })
}

// recordLocked records the current in-sync set if it has not been
// recorded yet: first on every member (its generation, durably), then
// through the hook. A member that fails to take it is dropped and the
// smaller set recorded instead, except the last, which is kept and waited
// for (errReconnecting). Hook failures (Consul unreachable) are retried,
// holding the writes that wait for the record, until the hook succeeds,
// the engine is fenced, or ctx ends. Callers hold stateMu, which is
// released while it waits between attempts.
func (e *Engine) recordLocked(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		e.order.Lock()
		set := e.targets
		e.order.Unlock()
		if e.recorded.Load() >= set.version {
			return nil
		}
		if e.fenced.Load() {
			return e.fencedErr()
		}
		addrs := make([]string, len(set.inSync))
		for i, t := range set.inSync {
			addrs[i] = t.p.cfg.Addr
		}
		if e.genSet != set.version {
			m := wire.Membership{Gen: max(e.genTried+1, epochGenBase(e.cfg.Epoch)), Replicas: addrs} // genTried >= gen
			e.genTried = m.Gen
			if retry, err := e.writeMembershipLocked(set, m); err != nil || retry {
				if err != nil {
					return err
				}
				continue // a member failed and was dropped: record the smaller set
			}
			e.gen, e.genSet = m.Gen, set.version
		}
		err := e.setInSync(ctx, e.gen, addrs)
		if err == nil {
			e.recorded.Store(set.version)
			return nil
		}
		if errors.Is(err, ErrFenced) {
			e.fence(err)
			return e.fencedErr()
		}
		if attempt == 0 {
			e.log.Warn("recording the in-sync set failed: holding the writes that depend on it and retrying",
				"in_sync", addrs, "generation", e.gen, "error", err)
		}
		// Let status readers and reconnects in while waiting; the loop
		// reads the set again after.
		e.holding.Add(1)
		e.stateMu.Unlock()
		// Held writes resume at most 250 ms after the hook works again
		// (a Consul blip): asking the local agent is cheap.
		werr := ctxutil.Sleep(ctx, backoff.Delay(50*time.Millisecond, 250*time.Millisecond, attempt))
		e.stateMu.Lock()
		e.holding.Add(-1)
		if werr != nil {
			return fmt.Errorf("volume %s: record in-sync set %v: %w (last error: %w)", e.cfg.Volume, addrs, werr, err)
		}
	}
}

// epochGenBase is the lowest generation an engine at epoch may write: the
// epoch in the high 32 bits. Generations are so ordered by (epoch, count)
// and a newer primary's sets always outrank an older one's, even those it
// could not see: a primary that found some replicas unreachable cannot
// know which numbers the previous one wrote to them, and a plain counter
// let an old set written to an unreachable replica outrank the newer
// primary's (simulator seed 69156776: acknowledged writes discarded).
// Epochs beyond 2^31 (never in practice: a replica refuses jumps over
// 2^32) get the largest base.
func epochGenBase(epoch uint64) uint64 {
	return min(epoch, 1<<31-1) << 32
}

// writeMembershipLocked writes m to every member of set. A member that
// fails is dropped (retry: the caller records the smaller set), unless it
// is the last one: then errReconnecting when its connection broke, or its
// error. Callers hold stateMu.
func (e *Engine) writeMembershipLocked(set *targetSet, m wire.Membership) (retry bool, err error) {
	payload, _ := json.Marshal(m)
	calls := make([]*call, len(set.inSync))
	for i, t := range set.inSync {
		calls[i] = t.c.start(wire.Frame{Type: wire.FrameMembership, Payload: payload}, nil)
	}
	var failed []int
	var errs []error
	for i, t := range set.inSync {
		if _, err := t.c.wait(calls[i]); err != nil {
			if errors.Is(err, wire.ErrStaleEpoch) {
				e.fence(err)
				return false, e.fencedErr()
			}
			failed, errs = append(failed, i), append(errs, err)
		}
	}
	for i, t := range set.inSync {
		if !slices.Contains(failed, i) {
			t.p.open.Membership = m
		}
	}
	if len(failed) == 0 {
		return false, nil
	}
	if len(failed) == len(set.inSync) {
		t := set.inSync[failed[0]]
		if t.c.failure() != nil {
			return false, errReconnecting
		}
		return false, fmt.Errorf("volume %s: record generation %d on the last in-sync replica %s: %w", e.cfg.Volume, m.Gen, t.p.cfg.Addr, errs[0])
	}
	for j, i := range failed {
		p := set.inSync[i].p
		p.state, p.reason = StateDropped, errs[j].Error()
		// It may hold m or the generation before it: if m, the bitmap's
		// generation differs and a later resync compares it whole.
		p.startBitmap(e.cfg.Size)
		e.markUnflushed(p, 0, 0, false)
		e.log.Error("dropping replica that failed to record the in-sync set", "replica", p.cfg.Addr, "error", errs[j])
		go p.client.close()
	}
	e.order.Lock()
	e.setTargetsLocked(e.rebuildLocked())
	e.order.Unlock()
	return true, nil
}

// waitReconnect waits until an in-sync replica has a working connection
// again (the background loop reconnects them), the engine is fenced, or
// ctx ends. The request is then sent again, and the in-sync replicas
// still unreachable are dropped as for any failure.
func (e *Engine) waitReconnect(ctx context.Context) error {
	e.holding.Add(1)
	defer e.holding.Add(-1)
	logged := false
	for {
		e.order.Lock()
		set, ch := e.targets, e.changed
		e.order.Unlock()
		if e.fenced.Load() {
			return e.fencedErr()
		}
		if len(connected(set)) > 0 {
			return nil
		}
		if !logged {
			e.log.Warn("holding I/O: the last in-sync replica is unreachable; waiting for it to come back")
			logged = true
		}
		select {
		case <-ch:
		case <-time.After(e.cfg.ReconnectInterval):
		case <-ctx.Done():
			return fmt.Errorf("volume %s: I/O held for the last in-sync replica abandoned: %w", e.cfg.Volume, ctx.Err())
		}
	}
}

// waitMinInSync blocks while fewer than MinInSync replicas are in sync.
func (e *Engine) waitMinInSync(ctx context.Context) error {
	logged := false
	for {
		e.order.Lock()
		have, ch := len(e.targets.inSync), e.changed
		e.order.Unlock()
		if e.fenced.Load() {
			return e.fencedErr()
		}
		if have >= e.cfg.MinInSync {
			return nil
		}
		if !logged {
			e.log.Warn("holding write: fewer replicas in sync than min_in_sync", "in_sync", have, "min_in_sync", e.cfg.MinInSync)
			logged = true
			e.holds.minInSync.Add(1)
			defer e.holds.minInSync.Add(-1)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("volume %s: write held for min_in_sync=%d abandoned: %w", e.cfg.Volume, e.cfg.MinInSync, ctx.Err())
		}
	}
}
