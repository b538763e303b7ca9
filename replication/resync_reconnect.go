package replication

import (
	"context"
	"errors"
	"fmt"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// Reconnecting in-sync replicas whose connection broke, in the
// background, before the request waiting for them is sent again.

// reconnectInSync reconnects an in-sync replica whose connection broke
// with no request failing on it, or while it was the last one (drop keeps
// it as the volume's copy). It must come back as the same replica with
// the same history: never created anew, same incarnation, same
// generation; otherwise it is no longer the copy and I/O stays held (the
// volume is offline until an operator acts).
func (e *Engine) reconnectInSync(ctx context.Context, p *peer) {
	nc, open, err := dialReplica(ctx, e.cfg.Dial, p.cfg.Addr, e.cfg.Volume, e.cfg.Size, e.cfg.Epoch, e.owner, false, e.cfg.Timeout, e.log)
	if err != nil {
		if errors.Is(err, wire.ErrStaleEpoch) {
			e.Fence(err)
			return
		}
		e.log.Trace("in-sync replica still unreachable", "replica", p.cfg.Addr, "error", err)
		return
	}
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	if p.state != StateInSync {
		// It was dropped while this dial was under way (a request failed
		// on it): it has a bitmap of what it misses since, and is resynced
		// like any replica behind.
		go nc.close()
		return
	}
	var alive, waiting []*peer // the other in-sync replicas, connected or not
	for _, q := range e.peers {
		if q != p && q.state == StateInSync {
			if q.client != nil && q.client.failure() == nil {
				alive = append(alive, q)
			} else {
				waiting = append(waiting, q)
			}
		}
	}
	// Its generation is the last one recorded, or a later one whose
	// recording was attempted (it may have reached this member).
	if open.Incarnation != p.open.Incarnation || open.Membership.Gen < e.gen || open.Membership.Gen > e.genTried {
		reason := fmt.Sprintf("came back without its history (incarnation %x, generation %d; want %x, %d..%d): it is no longer the volume's copy",
			open.Incarnation, open.Membership.Gen, p.open.Incarnation, e.gen, e.genTried)
		go nc.close()
		if len(alive)+len(waiting) == 0 {
			p.reason = reason
			e.log.Error("the last in-sync replica came back without its data: I/O stays held", "replica", p.cfg.Addr, "reason", reason)
			return
		}
		// Other in-sync replicas hold the data: it is behind, and they
		// are waited for instead.
		p.state, p.reason, p.dirty, p.client = StateDropped, reason, nil, nil
		p.persisted = ^uint64(0) // a bitmap persisted for it is stale: deleted
		e.order.Lock()
		e.setTargetsLocked(e.rebuildLocked())
		e.order.Unlock()
		e.log.Error("an in-sync replica came back without its data: dropped", "replica", p.cfg.Addr, "reason", reason)
		if err := e.recordLocked(ctx); err != nil {
			e.log.Warn("recording the drop failed; retried with the next write", "error", err)
		}
		return
	}
	rebooted := open.BootID == "" || open.BootID != p.open.BootID
	lostUnflushed := !open.Clean && rebooted
	if len(alive) > 0 && (p.uncertain != nil || lostUnflushed) {
		// Others hold every acknowledged write: resync it like a dropped
		// replica. Requests abandoned while every in-sync connection was
		// broken may have reached it and not the copy (the first back),
		// or the reverse: it gets their ranges. Its host restarted without
		// a clean shutdown (it lost power): it may have lost writes it
		// acknowledged but had not flushed, which the activity log covers.
		p.state, p.reason = StateDropped, "requests abandoned while it was away may differ from the copy"
		if lostUnflushed {
			p.reason = "its host restarted: may have lost unflushed writes"
		}
		p.dirty, p.dirtyOf, p.persisted = NewBitmap(e.cfg.Size), subjectOf(open), ^uint64(0)
		p.takeUncertain()
		if lostUnflushed {
			for _, x := range e.al.all() {
				p.dirty.SetRange(int64(x)*ExtentSize, ExtentSize)
			}
		}
		e.order.Lock()
		e.setTargetsLocked(e.rebuildLocked())
		e.order.Unlock()
		e.log.Warn("in-sync replica back: dropping it for resync from the copy", "replica", p.cfg.Addr, "reason", p.reason)
		go nc.close()
		if err := e.recordLocked(ctx); err != nil {
			e.log.Warn("recording the drop failed; retried with the next write", "error", err)
		}
		return
	}
	// The first back is the copy: what it holds is the volume.
	p.uncertain = nil
	if lostUnflushed {
		// The last in-sync replica's host restarted: it lost what it had
		// not flushed, which the activity log covers, and stays the
		// volume's copy. Replicas behind it may still hold those writes:
		// they must get the log's extents from it again, or they would
		// keep blocks it no longer has. So must the in-sync replicas
		// still away (every connection broke at once): they are dropped
		// now, with those extents.
		for _, q := range waiting {
			q.state, q.reason = StateDropped, "an in-sync replica that lost power came back first and is the volume's copy"
			q.startBitmap(e.cfg.Size)
			q.takeUncertain()
			if q.client != nil {
				go q.client.close()
			}
		}
		for _, q := range e.peers {
			if q == p {
				continue
			}
			if q.dirty != nil {
				for _, x := range e.al.all() {
					q.dirty.SetRange(int64(x)*ExtentSize, ExtentSize)
				}
			}
			q.missed++
		}
		e.lostSeq.Add(1)
		e.log.Warn("the last in-sync replica's host restarted: it may have lost unflushed writes; the flushes in flight and the next one fail, and replicas behind get its activity log's extents again",
			"replica", p.cfg.Addr)
	}
	p.client, p.open, p.reason = nc, open, ""
	e.order.Lock()
	e.setTargetsLocked(e.rebuildLocked())
	e.order.Unlock()
	e.log.Info("in-sync replica reconnected", "replica", p.cfg.Addr, "clean", open.Clean)
}
