package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/saddlebag/saddlebag/internal/backoff"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// Resync brings a replica that is behind back into the in-sync set while
// writes keep flowing. Three modes, chosen per replica:
//
//   - bitmap: the replica missed exactly the blocks in its dirty bitmap
//     (kept while it was away, persisted on the in-sync replicas);
//   - checksum: its history is unknown: every extent is compared by block
//     checksums and only differing blocks are sent;
//   - full: it is new and empty: every allocated range of the source is
//     copied (holes stay holes).
//
// During resync the replica receives every application write. A range
// being copied is locked: writes to it wait from the moment the source is
// read until the copy is sent, so the copy can never overwrite a newer
// write. The replica rejoins (through the in-sync hook) only when it holds
// everything.

// ResyncMode is how a replica is brought back (see above).
type ResyncMode string

// The resync modes.
const (
	ResyncBitmap   ResyncMode = "bitmap"
	ResyncChecksum ResyncMode = "checksum"
	ResyncFull     ResyncMode = "full"
)

// resyncChunk is the largest copy unit.
const resyncChunk = 1 << 20

var zeroChunk = make([]byte, resyncChunk)

type resyncProgress struct {
	mode     ResyncMode
	started  time.Time
	total    atomic.Int64 // bytes to examine
	done     atomic.Int64 // bytes examined
	sent     atomic.Int64 // data bytes sent to the replica
	repaired atomic.Int64 // extents found different (checksum mode)
	finished atomic.Bool
	elapsed  atomic.Int64 // nanoseconds from start to finish, once finished
	// limit holds the data sent to ResyncRate (nil: no limit); its
	// bucket holds one chunk.
	limit *rate.Limiter
}

// background owns the engine's periodic work: reconnecting and resyncing
// replicas that are behind, and (on a goroutine of its own) persisting
// their bitmaps. The two must not share a goroutine: persisting is a
// broadcast, which waits while the last in-sync replica reconnects, and
// only this loop reconnects it.
func (e *Engine) background(ctx context.Context) {
	e.wg.Go(func() { e.persistLoop(ctx) })
	reconnect := time.NewTicker(e.cfg.ReconnectInterval)
	defer reconnect.Stop()
	e.startResyncs(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-reconnect.C:
			e.startResyncs(ctx)
		}
	}
}

// persistLoop stores the bitmaps of replicas that are behind on the
// in-sync replicas once a second.
func (e *Engine) persistLoop(ctx context.Context) {
	persist := time.NewTicker(time.Second)
	defer persist.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-persist.C:
			if err := e.persistBitmaps(ctx, false); err != nil && !e.fenced.Load() && ctx.Err() == nil {
				e.log.Warn("persisting replica bitmaps failed", "error", err)
			}
		}
	}
}

func (e *Engine) startResyncs(ctx context.Context) {
	if e.fenced.Load() || ctx.Err() != nil {
		return
	}
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	now := time.Now()
	for _, p := range e.peers {
		if p.state == StateInSync && !p.busy && (p.client == nil || p.client.failure() != nil) {
			p.busy = true
			e.wg.Go(func() {
				e.reconnectInSync(ctx, p)
				e.stateMu.Lock()
				p.busy = false
				e.stateMu.Unlock()
			})
			continue
		}
		if p.state != StateInSync && p.state != StateResyncing && !p.busy && !now.Before(p.retryAt) {
			p.busy = true
			e.wg.Go(func() {
				e.resyncPeer(ctx, p)
				e.stateMu.Lock()
				p.busy = false
				e.stateMu.Unlock()
			})
		}
	}
}

// resyncPeer connects to p if needed, resyncs it and makes it rejoin.
func (e *Engine) resyncPeer(ctx context.Context, p *peer) {
	e.stateMu.Lock()
	c, wasState := p.client, p.state
	e.stateMu.Unlock()
	if c == nil || c.failure() != nil {
		nc, open, err := dialReplica(ctx, e.cfg.Dial, p.cfg.Addr, e.cfg.Volume, e.cfg.Size, e.cfg.Epoch, e.owner, true, e.cfg.Timeout, e.log)
		if err != nil {
			if errors.Is(err, wire.ErrStaleEpoch) {
				e.Fence(err)
				return
			}
			e.log.Trace("replica still unreachable", "replica", p.cfg.Addr, "error", err)
			return
		}
		c = nc
		e.stateMu.Lock()
		p.client, p.open = c, open
		switch {
		case holdsNothing(open):
			// It holds nothing (new, or its data is gone: a new disk, a
			// wiped data dir): a full copy of what is allocated.
			p.created, p.dirty = true, nil
		case p.dirty != nil && p.dirtyOf.inc != 0 && p.dirtyOf.inc != open.Incarnation:
			// Not the replica the bitmap was kept for (its data was lost
			// and it was made again): compare everything.
			e.log.Warn("replica was re-created since its bitmap was kept: comparing it whole", "replica", p.cfg.Addr)
			p.dirty = nil
		case p.dirty != nil && (p.dirtyOf.gen != open.Membership.Gen || p.dirtyOf.target != open.TargetGen):
			// It was a member of a later in-sync set than the one it left
			// when the bitmap was started, or a resync target since a
			// member left: written by a primary that did not keep this
			// bitmap, or while this one's holder was away, it may hold
			// blocks the bitmap does not name.
			e.log.Warn("replica written since its bitmap was kept: comparing it whole", "replica", p.cfg.Addr,
				"bitmap_generation", p.dirtyOf.gen, "replica_generation", open.Membership.Gen,
				"bitmap_target_generation", p.dirtyOf.target, "replica_target_generation", open.TargetGen)
			p.dirty = nil
		}
		if p.dirty != nil {
			p.dirtyOf.inc = open.Incarnation
		}
		e.stateMu.Unlock()
		e.log.Info("replica reachable again", "replica", p.cfg.Addr, "was", wasState, "clean", open.Clean)
	}

	// Bitmaps it held for others from when it was in sync describe a
	// volume it stops holding with its first copy; a later primary that
	// took it for the copy (over a rolled-back record) must not trust
	// them. It gets the engine's own when it rejoins.
	if err := e.forgetHeldBitmaps(c, p); err != nil {
		e.stateMu.Lock()
		e.backOffLocked(p)
		e.stateMu.Unlock()
		c.close()
		if ctx.Err() == nil {
			e.log.Warn("resync not started: deleting the bitmaps the replica holds for others failed", "replica", p.cfg.Addr, "error", err)
		}
		return
	}

	// Before it receives anything, it learns it is a resync target under
	// the in-sync generation now recorded on the members (replica.Meta.TargetGen):
	// bitmaps that members which leave later hold for it then no longer
	// match it. A member leaving aborts a resync from a bitmap
	// (rebuildLocked), so its target never receives a write under a later
	// set with this mark; a full or checksum resync deletes the members'
	// copies of its target's bitmap before its pass instead.
	e.stateMu.Lock()
	e.order.Lock()
	gen, version, recorded := e.gen, e.targets.version, e.genSet == e.targets.version
	e.order.Unlock()
	e.stateMu.Unlock()
	if !recorded {
		e.log.Debug("resync waits until the in-sync set is recorded on its members", "replica", p.cfg.Addr)
		return
	}
	if _, err := c.wait(c.start(wire.Frame{Type: wire.FrameTarget, Payload: binary.BigEndian.AppendUint64(nil, gen)}, nil)); err != nil {
		e.stateMu.Lock()
		e.backOffLocked(p)
		e.stateMu.Unlock()
		c.close()
		if ctx.Err() == nil {
			e.log.Warn("resync not started: recording the replica as a resync target failed", "replica", p.cfg.Addr, "error", err)
		}
		return
	}

	e.stateMu.Lock()
	e.order.Lock()
	changed := e.gen != gen || e.targets.version != version
	e.order.Unlock()
	if changed {
		e.stateMu.Unlock()
		e.log.Debug("the in-sync set changed while the resync target was recorded: recorded again", "replica", p.cfg.Addr)
		return
	}
	p.open.TargetGen = gen
	if p.dirty != nil && p.dirtyOf.target != gen {
		// This engine keeps the bitmap and now makes the writes: it
		// describes the replica as marked. Copies held under the old mark
		// are stored again.
		p.dirtyOf.target, p.persisted = gen, ^uint64(0)
	}
	mode := ResyncChecksum
	switch {
	case p.created:
		mode = ResyncFull
	case p.dirty != nil:
		mode = ResyncBitmap
	}
	e.settleUnflushed(p, p.open)
	dirty, fresh := p.dirty, p.open.Created
	prog := &resyncProgress{mode: mode, started: time.Now()}
	if e.cfg.ResyncRate > 0 {
		// Empty at the start, as the rate asks of the whole resync: n
		// bytes sent take n/ResyncRate seconds, the first chunk too.
		prog.limit = rate.NewLimiter(rate.Limit(e.cfg.ResyncRate), resyncChunk)
		prog.limit.AllowN(time.Now(), resyncChunk)
	}
	// The reason stays: it says why the replica fell behind.
	p.resync, p.state = prog, StateResyncing
	e.order.Lock()
	e.setTargetsLocked(e.rebuildLocked())
	// From here on writes go to the replica (no longer to its bitmap).
	var dirtyChanges uint64
	if dirty != nil {
		dirtyChanges = dirty.Changes()
	}
	missed := p.missed
	e.order.Unlock()
	e.stateMu.Unlock()

	logDone := make(chan struct{})
	e.wg.Go(func() { e.logProgress(p.cfg.Addr, prog, logDone) })
	var err error
	if dirty == nil {
		// A bitmap kept earlier for this replica no longer describes what
		// it misses once a full or compare pass starts writing to it: a
		// later primary must compare it whole, not trust that bitmap.
		err = e.broadcast(ctx, wire.Frame{Type: wire.FramePutBitmap, Payload: wire.PeerPayload(p.cfg.Addr, nil)})
	}
	if err == nil {
		// The pass ends as soon as the connection does (the resync was
		// aborted): not after a throttle's wait.
		pctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-c.readerDone:
				cancel()
			case <-pctx.Done():
			}
		}()
		err = e.resyncPass(pctx, c, dirty, fresh, prog)
		cancel()
	}
	if err == nil {
		err = e.rejoin(ctx, p, c, prog, dirtyChanges, missed)
	}
	close(logDone)
	if err != nil {
		e.stateMu.Lock()
		if p.dirty != nil {
			// It acknowledged writes (and copies) from its page cache
			// since its last flush, like an in-sync replica that is
			// dropped: if its host lost power they are gone, and once
			// their extents leave the activity log only this names them.
			e.markUnflushed(p, 0, 0, false)
		}
		if p.state == StateResyncing {
			p.state, p.reason = StateDropped, fmt.Sprintf("resync aborted: %v", err)
			e.order.Lock()
			e.setTargetsLocked(e.rebuildLocked())
			e.order.Unlock()
		}
		e.backOffLocked(p)
		e.stateMu.Unlock()
		c.close()
		if ctx.Err() == nil {
			e.log.Warn("resync aborted", "replica", p.cfg.Addr, "mode", mode, "error", err, "retry_in", time.Until(p.retryAt).Round(time.Millisecond))
		}
		return
	}
	e.stateMu.Lock()
	p.failures, p.reason = 0, ""
	e.stateMu.Unlock()
}

// backOffLocked delays p's next resync attempt: a replica that fails
// every attempt (a full disk, say) is retried ever less often
// (internal/backoff), up to once a minute (or 64 reconnect intervals when
// that is less). Callers hold stateMu.
func (e *Engine) backOffLocked(p *peer) {
	p.failures++
	p.retryAt = time.Now().Add(backoff.Delay(e.cfg.ReconnectInterval, min(time.Minute, e.cfg.ReconnectInterval<<6), p.failures))
}

// forgetHeldBitmaps deletes, on the replica behind c, every bitmap it
// holds for the volume's other replicas.
func (e *Engine) forgetHeldBitmaps(c *replicaClient, p *peer) error {
	var calls []*call
	for _, q := range e.peers {
		if q != p {
			calls = append(calls, c.start(wire.Frame{Type: wire.FramePutBitmap, Payload: wire.PeerPayload(q.cfg.Addr, nil)}, nil))
		}
	}
	var errs []error
	for _, cl := range calls {
		if _, err := c.wait(cl); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (e *Engine) logProgress(addr string, prog *resyncProgress, done <-chan struct{}) {
	t := time.NewTicker(e.cfg.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			st := prog.status()
			e.log.Info("resync progress", "replica", addr, "mode", st.Mode,
				"percent", fmt.Sprintf("%.1f", st.Percent), "done_bytes", st.DoneBytes, "total_bytes", st.TotalBytes,
				"sent_bytes", st.SentBytes, "rate_mib_s", fmt.Sprintf("%.1f", st.BytesPerSec/(1<<20)),
				"eta", time.Duration(st.ETASeconds*float64(time.Second)).Round(time.Second))
		}
	}
}

// rejoin makes a resynced replica in sync: it flushes it, makes it a
// member (join) and deletes its persisted bitmap.
//
// dirtyChanges and missed are the bitmap's change count and the peer's
// missed-write count when the pass began: if either moved, a write the
// pass did not copy was missed meanwhile, and the replica does not rejoin
// (the next attempt copies it).
func (e *Engine) rejoin(ctx context.Context, p *peer, c *replicaClient, prog *resyncProgress, dirtyChanges, missed uint64) error {
	if _, err := c.wait(c.start(wire.Frame{Type: wire.FrameFlush}, nil)); err != nil {
		return err
	}
	if err := e.join(ctx, p, c, prog, dirtyChanges, missed); err != nil {
		return err
	}
	// It no longer misses anything: its bitmap goes. This may wait for
	// the last in-sync replica, so no lock is held (a drop of it meanwhile
	// may see its new bitmap deleted: it is then compared by checksums,
	// slower but whole).
	if err := e.broadcast(ctx, wire.Frame{Type: wire.FramePutBitmap, Payload: wire.PeerPayload(p.cfg.Addr, nil)}); err != nil {
		e.log.Warn("deleting the rejoined replica's persisted bitmap failed", "replica", p.cfg.Addr, "error", err)
	}
	st := prog.status()
	e.log.Info("resync complete: replica back in sync", "replica", p.cfg.Addr, "mode", prog.mode,
		"sent_bytes", st.SentBytes, "examined_bytes", st.DoneBytes, "repaired_extents", st.RepairedExtents,
		"duration", time.Since(prog.started).Round(time.Millisecond))
	return nil
}

// join hands a resynced (and flushed) replica the activity log and the
// bitmaps an in-sync replica holds, then moves it into the in-sync set
// (recorded through the hook). The log and the persisted bitmaps cannot
// change meanwhile (update and bmMu are held); neither lock is held past
// it, as a write waiting for the log cannot give up on its context.
func (e *Engine) join(ctx context.Context, p *peer, c *replicaClient, prog *resyncProgress, dirtyChanges, missed uint64) error {
	e.al.update.Lock()
	defer e.al.update.Unlock()
	if _, err := c.wait(c.start(activityFrame(e.al.list()), nil)); err != nil {
		return err
	}
	e.bmMu.Lock()
	defer e.bmMu.Unlock()
	// The bitmaps it holds for the other replicas were stored by earlier
	// primaries, or before it fell behind, and no longer say what they
	// miss; as an in-sync replica it is what a later primary asks. Each is
	// replaced by this engine's (none for a replica in sync or of unknown
	// history) before it becomes a member. A write meanwhile is in a hot
	// extent and the persister stores its bitmap change on every in-sync
	// replica.
	e.stateMu.Lock()
	var held [][]byte
	for _, q := range e.peers {
		if q != p {
			held = append(held, wire.PeerPayload(q.cfg.Addr, e.persistedFormLocked(q)))
		}
	}
	e.stateMu.Unlock()
	for _, pl := range held {
		if _, err := c.wait(c.start(wire.Frame{Type: wire.FramePutBitmap, Payload: pl}, nil)); err != nil {
			return err
		}
	}
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	if p.state != StateResyncing {
		return fmt.Errorf("replica %s left resync: %s", p.cfg.Addr, p.reason)
	}
	if (p.dirty != nil && p.dirty.Changes() != dirtyChanges) || p.missed != missed {
		return fmt.Errorf("replica %s: writes were missed during resync", p.cfg.Addr)
	}
	// The flush before made everything it holds durable, including what
	// it had unflushed when it was dropped.
	p.state, p.dirty, p.created = StateInSync, nil, false
	p.unflushed, p.unflushedBoot = nil, ""
	prog.elapsed.Store(int64(time.Since(prog.started)))
	prog.finished.Store(true)
	e.order.Lock()
	e.setTargetsLocked(e.rebuildLocked())
	e.order.Unlock()
	if err := e.recordLocked(ctx); err != nil {
		e.log.Error("recording the rejoined replica failed; retried with the next write", "replica", p.cfg.Addr, "error", err)
	}
	return nil
}

// resyncTargetFailed handles an application request that failed on a
// replica being resynced: the request's range is marked missing and the
// resync is aborted; the replica is retried later.
func (e *Engine) resyncTargetFailed(t target, err error, off, n int64, isData bool) {
	if errors.Is(err, wire.ErrStaleEpoch) {
		e.Fence(err)
		return
	}
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	p := t.p
	if p.dirty != nil {
		e.markUnflushed(p, off, n, isData)
	}
	p.missed++
	if p.state == StateResyncing && p.client == t.c {
		p.state, p.reason = StateDropped, err.Error()
		e.log.Error("replica failed during resync", "replica", p.cfg.Addr, "error", err)
		e.order.Lock()
		e.setTargetsLocked(e.rebuildLocked())
		e.order.Unlock()
		go t.c.close()
	}
}
