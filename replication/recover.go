package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// recover runs once at start, before the engine serves I/O: it makes the
// in-sync replicas identical in the extents the previous primary's
// activity log left hot (a crash may have left a write on some of them
// only), loads the persisted bitmaps of the replicas that are behind, and
// records the in-sync set.
func (e *Engine) recover(ctx context.Context) error {
	set := e.targets
	hotSet := map[uint64]bool{}
	nExtents := uint64((e.cfg.Size + ExtentSize - 1) / ExtentSize)
	for _, t := range set.inSync {
		for _, x := range t.p.open.ActivityLog {
			if x < nExtents {
				hotSet[x] = true
			}
		}
	}
	hot := make([]uint64, 0, len(hotSet))
	for x := range hotSet {
		hot = append(hot, x)
	}
	slices.Sort(hot)

	if len(hot) > 0 && len(set.inSync) > 1 {
		if err := e.reconcile(ctx, set, hot); err != nil {
			return err
		}
	}
	e.loadBitmaps(ctx, set, hot)

	e.al.mu.Lock()
	for _, x := range hot {
		e.al.hot[x] = &alExtent{}
	}
	e.al.mu.Unlock()
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	e.order.Lock()
	e.setTargetsLocked(e.rebuildLocked())
	e.order.Unlock()
	if err := e.recordLocked(ctx); err != nil {
		return err
	}
	if len(hot) > 0 {
		// Every in-sync replica now agrees on the log.
		return e.broadcastStart(ctx, activityFrame(hot))
	}
	return nil
}

// broadcastStart sends a control frame to every in-sync replica during
// start, failing on any error (nothing is served yet, so a failure is the
// caller's to retry).
func (e *Engine) broadcastStart(ctx context.Context, req wire.Frame) error {
	for _, t := range e.targets.inSync {
		if _, err := t.c.wait(t.c.start(req, nil)); err != nil {
			if errors.Is(err, wire.ErrStaleEpoch) {
				return fmt.Errorf("%w: %w", ErrFenced, err)
			}
			return err
		}
	}
	return nil
}

// reconcile compares the hot extents among the in-sync replicas and copies
// each differing block from the source (the local replica, or the first) to
// the others. Which of them holds a write the crashed primary never
// acknowledged does not matter; that they end identical does.
func (e *Engine) reconcile(ctx context.Context, set *targetSet, hot []uint64) error {
	src := set.inSync[0]
	for _, t := range set.inSync {
		if t.p.cfg.Local {
			src = t
		}
	}
	var repaired int64
	for _, x := range hot {
		off := int64(x) * ExtentSize
		n := min(ExtentSize, e.cfg.Size-off)
		req := wire.Frame{Type: wire.FrameChecksum, Offset: uint64(off), Length: uint64(n)}
		calls := make([]*call, len(set.inSync))
		for i, t := range set.inSync {
			calls[i] = t.c.start(req, nil)
		}
		sums := make([][]byte, len(set.inSync))
		for i, t := range set.inSync {
			reply, err := t.c.wait(calls[i])
			if err != nil {
				return fmt.Errorf("reconcile extent %d on %s: %w", x, t.p.cfg.Addr, err)
			}
			sums[i] = reply.Payload
		}
		e.stats.reconcileExtents.Add(1)
		e.stats.reconcileBytes.Add(n * int64(len(set.inSync)))
		srcSums := sums[slices.IndexFunc(set.inSync, func(t target) bool { return t.p == src.p })]
		for i, t := range set.inSync {
			if t.p == src.p {
				continue
			}
			for _, run := range differingRuns(srcSums, sums[i], off) {
				for o := run.off; o < run.off+run.n; o += resyncChunk {
					if err := e.copyLocked(ctx, src, t.c, o, min(resyncChunk, run.off+run.n-o), nil); err != nil {
						return fmt.Errorf("reconcile extent %d onto %s: %w", x, t.p.cfg.Addr, err)
					}
				}
				repaired += run.n / BlockSize
			}
		}
	}
	e.stats.reconcileBlocks.Add(repaired)
	e.log.Info("reconciled the activity log's hot extents", "extents", len(hot),
		"compared_bytes", e.stats.reconcileBytes.Load(), "repaired_blocks", repaired, "source", src.p.cfg.Addr)
	return nil
}

// loadBitmaps gives each replica that is behind the union of the bitmaps
// the in-sync replicas hold for it, plus every hot extent (writes there may
// not have reached the persisted bitmap). A replica none holds a bitmap for
// has an unknown history: resync compares checksums (or copies everything
// if it is new).
func (e *Engine) loadBitmaps(ctx context.Context, set *targetSet, hot []uint64) {
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	for _, p := range e.peers {
		if p.state == StateInSync || p.created {
			continue
		}
		var dirty *Bitmap
		var of subject
		for _, t := range set.inSync {
			reply, err := t.c.wait(t.c.start(wire.Frame{Type: wire.FrameGetBitmap, Payload: []byte(p.cfg.Addr)}, nil))
			if err != nil || len(reply.Payload) == 0 {
				continue
			}
			bof, b, err := decodePeerBitmap(reply.Payload, e.cfg.Size)
			if err != nil {
				e.log.Warn("ignoring an unreadable persisted bitmap", "replica", p.cfg.Addr, "holder", t.p.cfg.Addr, "error", err)
				continue
			}
			if p.client != nil && bof.inc != p.open.Incarnation {
				e.log.Warn("ignoring the persisted bitmap of an earlier incarnation of the replica", "replica", p.cfg.Addr, "holder", t.p.cfg.Addr)
				continue
			}
			if p.client != nil && (bof.gen != p.open.Membership.Gen || bof.target != p.open.TargetGen) {
				// It has been in sync since, or a resync target after a
				// member left (written without this bitmap's holder): the
				// bitmap may miss blocks it holds.
				e.log.Warn("ignoring a persisted bitmap older than the replica's last in-sync or resync-target generation", "replica", p.cfg.Addr,
					"holder", t.p.cfg.Addr, "bitmap_generation", bof.gen, "replica_generation", p.open.Membership.Gen,
					"bitmap_target_generation", bof.target, "replica_target_generation", p.open.TargetGen)
				continue
			}
			if dirty != nil && bof != of {
				// Two holders disagree on which replica it describes:
				// trust neither.
				dirty = nil
				break
			}
			if dirty == nil {
				dirty, of = NewBitmap(e.cfg.Size), bof
			}
			if err := dirty.MergeEncoded(b.Encode(wire.MaxControlPayload)); err != nil {
				continue
			}
		}
		if dirty == nil {
			e.log.Info("no bitmap for a replica that is behind: it will be compared by checksums", "replica", p.cfg.Addr)
			continue
		}
		for _, x := range hot {
			dirty.SetRange(int64(x)*ExtentSize, ExtentSize)
		}
		p.dirty, p.dirtyOf, p.persisted = dirty, of, ^uint64(0)
		e.log.Info("loaded the bitmap of a replica that is behind", "replica", p.cfg.Addr, "dirty_bytes", dirty.Count()*BlockSize)
	}
}
