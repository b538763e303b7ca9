package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// The write path: a request goes to every in-sync and resyncing replica
// and completes when every in-sync one has it; replicas that fail are
// dropped, with what they may miss marked in their bitmaps.

// errReconnecting is settle's answer when the request failed on every
// in-sync replica and the one kept as the volume's copy lost its
// connection: the request is sent again once it is back.
var errReconnecting = errors.New("the last in-sync replica is reconnecting")

// replicate sends an application request (write, trim or flush) to every
// in-sync and resyncing replica and returns once all in-sync ones have
// applied it, after dropping (and recording) any that failed. When it
// failed on all of them, the last one stays the volume's copy (the in-sync
// set is never empty): the request is sent again once that replica is
// reconnected, or fails with its error when the replica answered with one.
func (e *Engine) replicate(ctx context.Context, req wire.Frame) error {
	if e.fenced.Load() {
		return e.fencedErr()
	}
	off, n, isData := dataRange(&req)
	if isData {
		first, last := extentSpan(off, n)
		if err := e.alAcquire(ctx, first, last); err != nil {
			return err
		}
		defer e.alRelease(first, last)
	}
	if err := e.apply(ctx, req); err != nil {
		return err
	}
	if err := e.waitMinInSync(ctx); err != nil {
		return err
	}
	return e.passGate(ctx)
}

// apply sends req to every in-sync and resyncing replica and settles it,
// sending it again while the last in-sync replica reconnects.
func (e *Engine) apply(ctx context.Context, req wire.Frame) error {
	off, n, isData := dataRange(&req)
	psum := wire.PayloadSum(req.Payload)
	for {
		e.order.Lock()
		for isData && e.lockedLocked(off, n) {
			e.orderCond.Wait()
		}
		if e.fenced.Load() {
			// Fenced while it waited (for a resync's lock, for room in the
			// activity log): a fenced primary sends nothing more.
			e.order.Unlock()
			return e.fencedErr()
		}
		set := e.targets
		if isData {
			for _, b := range set.behind {
				b.SetRange(off, n)
			}
		}
		calls := make([]*call, len(set.inSync))
		for i, t := range set.inSync {
			calls[i] = t.c.startSummed(req, psum, nil)
		}
		rcalls := make([]*call, len(set.resyncing))
		for i, t := range set.resyncing {
			rcalls[i] = t.c.startSummed(req, psum, nil)
		}
		e.order.Unlock()

		for i, cl := range rcalls {
			if _, err := set.resyncing[i].c.wait(cl); err != nil {
				e.resyncTargetFailed(set.resyncing[i], err, off, n, isData)
			}
		}
		err := e.settle(ctx, set, calls, req.Type, off, n, isData)
		if errors.Is(err, errReconnecting) {
			if err := e.waitReconnect(ctx); err != nil {
				if isData {
					e.markUncertain(set, off, n)
				}
				return err
			}
			continue
		}
		return err
	}
}

// markUncertain records that a data request sent to set.inSync was
// abandoned while every one of their connections was broken: any of them
// may hold it.
func (e *Engine) markUncertain(set *targetSet, off, n int64) {
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	for _, t := range set.inSync {
		if t.p.state != StateInSync {
			continue // dropped since, with a bitmap of its own
		}
		if t.p.uncertain == nil {
			t.p.uncertain = NewBitmap(e.cfg.Size)
		}
		t.p.uncertain.SetRange(off, n)
	}
}

// broadcast sends a control request (activity log, bitmaps) to every
// in-sync replica and settles the outcome like a write.
func (e *Engine) broadcast(ctx context.Context, req wire.Frame) error {
	for {
		if e.fenced.Load() {
			return e.fencedErr()
		}
		psum := wire.PayloadSum(req.Payload)
		e.order.Lock()
		set := e.targets
		calls := make([]*call, len(set.inSync))
		for i, t := range set.inSync {
			calls[i] = t.c.startSummed(req, psum, nil)
		}
		e.order.Unlock()
		err := e.settle(ctx, set, calls, req.Type, 0, 0, false)
		if !errors.Is(err, errReconnecting) {
			return err
		}
		if err := e.waitReconnect(ctx); err != nil {
			return err
		}
	}
}

// settle waits for calls sent to set.inSync and decides the outcome: fence
// on a stale epoch, drop failed replicas (marking what they may miss in
// their bitmaps), and make sure the in-sync set the request relied on is
// recorded before the request completes.
func (e *Engine) settle(ctx context.Context, set *targetSet, calls []*call, what wire.FrameType, off, n int64, isData bool) error {
	if len(calls) == 0 {
		return fmt.Errorf("%w: volume %s", ErrNoReplicas, e.cfg.Volume)
	}
	var failed map[*peer]error
	for i, cl := range calls {
		if _, err := set.inSync[i].c.wait(cl); err != nil {
			if failed == nil {
				failed = map[*peer]error{}
			}
			failed[set.inSync[i].p] = err
		}
	}
	for _, err := range failed {
		if errors.Is(err, wire.ErrStaleEpoch) {
			e.fence(fmt.Errorf("a newer primary has taken over: %w", err))
			return e.fencedErr()
		}
	}
	if len(failed) == 0 && e.recorded.Load() >= set.version {
		return nil
	}
	kept, err := e.drop(ctx, failed, set.resyncing, off, n, isData)
	if err != nil {
		return err
	}
	// kept is the copy the volume keeps when the request failed on every
	// in-sync replica, or on every one with a working connection.
	e.stateMu.Lock()
	alive := kept != nil && kept.client != nil && kept.client.failure() == nil
	e.stateMu.Unlock()
	if len(failed) < len(calls) && (kept == nil || alive) {
		return nil
	}
	if alive {
		return fmt.Errorf("volume %s: %s failed on its last in-sync replica: %w", e.cfg.Volume, what, failed[kept])
	}
	return errReconnecting
}

func joinErrs(m map[*peer]error) error {
	var errs []error
	for _, err := range m {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// markUnflushed records what a failed replica may lack: the request's
// range in its bitmap, and every extent of the activity log as possibly
// lost. A replica acknowledges a write once it is in its page cache; if
// its host loses power before the next flush, every write since its last
// flush is gone. The activity log holds every extent written since the
// last flush on all replicas (an extent leaves it only after one), so it
// covers them. Whether they were lost is known when the replica is back
// (settleUnflushed): only if its host rebooted. Callers hold stateMu;
// p.dirty is not nil.
func (e *Engine) markUnflushed(p *peer, off, n int64, isData bool) {
	if isData {
		p.dirty.SetRange(off, n)
	}
	if p.unflushed == nil {
		p.unflushed, p.unflushedBoot = map[uint64]bool{}, p.open.BootID
	}
	for _, x := range e.al.all() {
		p.unflushed[x] = true
	}
}

// settleUnflushed decides, for a replica that is back and reported open,
// whether it lost the writes markUnflushed recorded: when its host
// rebooted since (or cannot say), they go into its bitmap. A process that
// only crashed kept them in the page cache, but they are still not
// durable there: they stay recorded (and in its persisted bitmap) until a
// flush on it completes (rejoin), so that a power loss before that, even
// during its resync, still resyncs them. Callers hold stateMu.
func (e *Engine) settleUnflushed(p *peer, open wire.OpenReply) {
	if p.unflushed == nil {
		return
	}
	if p.dirty != nil {
		if rebooted := open.BootID == "" || p.unflushedBoot == "" || open.BootID != p.unflushedBoot; !rebooted {
			return
		}
		for x := range p.unflushed {
			p.dirty.SetRange(int64(x)*ExtentSize, ExtentSize)
		}
		e.log.Info("replica's host restarted since it was dropped: resyncing the extents it may have lost unflushed",
			"replica", p.cfg.Addr, "extents", len(p.unflushed))
	}
	p.unflushed, p.unflushedBoot = nil, ""
}

// drop removes failed replicas from the in-sync set, records the new set,
// and marks in each failed replica's bitmap what it may miss. The in-sync
// set never becomes empty: when every in-sync replica failed, one of them
// (one that answered with an error before one whose connection broke, the
// local one before a remote one) stays the volume's copy and is returned.
// So when the request's connections broke and every other in-sync replica
// is itself away (its connection broke with nothing in flight, and it is
// being reconnected): they are all kept, and one whose connection broke
// is returned.
// drop returns only when the set every caller relied on is recorded.
func (e *Engine) drop(ctx context.Context, failed map[*peer]error, resyncing []target, off, n int64, isData bool) (*peer, error) {
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	var kept *peer
	keep := map[*peer]bool{}
	remaining, remainingUp, failedInSync, failedUp := 0, 0, 0, 0
	for _, p := range e.peers {
		if p.state != StateInSync {
			continue
		}
		up := p.client != nil && p.client.failure() == nil
		switch {
		case failed[p] == nil:
			remaining++
			if up {
				remainingUp++
			}
		default:
			failedInSync++
			if up {
				failedUp++
			}
		}
	}
	// The request's connections broke and no other in-sync replica has a
	// working one: those others are away, not the volume's copy. Dropping
	// the failed ones for them would bet the volume on a replica already
	// gone (simulator seed 851711047: the one left had been wiped, while
	// the one dropped, partitioned, held every acknowledged write, and I/O
	// stayed held for good). As when every connection breaks at once, all
	// stay; the first back with its history is the copy.
	allAway := len(failed) > 0 && failedInSync > 0 && failedUp == 0 && remainingUp == 0
	if (remaining == 0 || allAway) && len(failed) > 0 && isData {
		// The request failed on every in-sync replica, but the replicas
		// it was sent to as resync targets may have applied it: they now
		// differ from the copy there. Whatever became of their resync
		// since (it may have ended, aborted, between their reply and
		// now), they get the range back from the copy, and a resync still
		// running must not end on what it copied before. Done under
		// stateMu with the in-sync check above, so that none of them can
		// have rejoined in between.
		for _, t := range resyncing {
			if t.p.dirty != nil {
				t.p.dirty.SetRange(off, n)
			}
			t.p.missed++
		}
	}
	if (remaining == 0 || allAway) && len(failed) > 0 {
		for _, p := range e.peers {
			if failed[p] == nil || p.state != StateInSync {
				continue
			}
			alive := p.client != nil && p.client.failure() == nil
			best := kept == nil
			if kept != nil {
				keptAlive := kept.client != nil && kept.client.failure() == nil
				best = (alive && !keptAlive) || (alive == keptAlive && p.cfg.Local && !kept.cfg.Local)
			}
			if best {
				kept = p
			}
		}
		if kept != nil && kept.client != nil && kept.client.failure() == nil {
			// One answered (with an error): it stays the copy.
			keep[kept] = true
			e.log.Error("every in-sync replica failed the request: keeping one as the volume's copy",
				"replica", kept.cfg.Addr, "error", failed[kept])
		} else if kept != nil {
			// Every connection broke at once: each of them holds every
			// acknowledged write, and which one comes back intact is not
			// known yet (one may have been wiped). Keep them all; the
			// first back with its history is the copy, and the others are
			// dropped then.
			var addrs []string
			for _, p := range e.peers {
				if p.state == StateInSync {
					if failed[p] != nil {
						keep[p] = true
					}
					addrs = append(addrs, p.cfg.Addr)
				}
			}
			slices.Sort(addrs)
			e.log.Error("every in-sync replica's connection broke: keeping them all until one is back", "replicas", addrs)
		}
	}
	changed := false
	for p, err := range failed {
		if keep[p] {
			continue
		}
		if p.state != StateInSync {
			if isData && p.dirty != nil {
				p.dirty.SetRange(off, n)
			}
			p.missed++
			continue
		}
		p.state, p.reason = StateDropped, err.Error()
		e.stats.drops.Add(1)
		p.startBitmap(e.cfg.Size)
		p.takeUncertain()
		e.markUnflushed(p, off, n, isData)
		changed = true
		e.log.Error("dropping replica from the in-sync set", "replica", p.cfg.Addr, "error", err)
		go p.client.close()
	}
	if changed {
		e.order.Lock()
		e.setTargetsLocked(e.rebuildLocked())
		e.order.Unlock()
	}
	return kept, e.recordLocked(ctx)
}
