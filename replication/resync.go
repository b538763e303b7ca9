package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
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
		case open.HoldsNothing():
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
	// the in-sync generation now recorded on the members (Meta.TargetGen):
	// bitmaps that members which leave later hold for it then no longer
	// match it. A member leaving aborts the resync (rebuildLocked), so it
	// never receives a write under a later set with this mark.
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

// resyncParallel is how many chunks one resync copies at once: enough to
// keep both the source's and the target's disk and the network busy.
const resyncParallel = 16

// copier runs copies of distinct ranges concurrently, at most
// resyncParallel at once, and keeps the first error (an errgroup). A copy
// that fails stops new ones from starting; those in flight finish.
type copier struct {
	g      *errgroup.Group
	failed context.Context // done once a copy has failed
	done   func(n int64)
}

func newCopier(done func(n int64)) *copier {
	// Not the resync's context: a cancelled resync must still end in its
	// copies' error, never in a wait that reports success.
	g, failed := errgroup.WithContext(context.Background())
	g.SetLimit(resyncParallel)
	return &copier{g: g, failed: failed, done: done}
}

// run starts copy (of n bytes) once a slot is free; false after a failure.
func (cp *copier) run(n int64, copy func() error) bool {
	if cp.failed.Err() != nil {
		return false
	}
	cp.g.Go(func() error {
		if err := copy(); err != nil {
			return err
		}
		cp.done(n)
		return nil
	})
	return true
}

// wait waits for every copy started and returns the first error.
func (cp *copier) wait() error { return cp.g.Wait() }

// resyncPass copies what the replica behind c misses. fresh says the
// replica was created empty by the open of c: a full copy then need not
// clear what lies outside the source's allocated ranges.
func (e *Engine) resyncPass(ctx context.Context, c *replicaClient, dirty *Bitmap, fresh bool, prog *resyncProgress) error {
	switch prog.mode {
	case ResyncBitmap:
		prog.total.Store(dirty.Count() * BlockSize)
		cp := newCopier(func(n int64) { prog.done.Add(n) })
		for off := int64(0); ; {
			o, n, ok := dirty.NextRun(off, resyncChunk)
			if !ok || !cp.run(n, func() error { return e.copyRange(ctx, c, o, n, prog) }) {
				break
			}
			off = o + n
		}
		return cp.wait()
	case ResyncFull:
		prog.total.Store(e.cfg.Size)
		const window = 256 << 20
		for off := int64(0); off < e.cfg.Size; off += window {
			n := min(window, e.cfg.Size-off)
			runs, err := e.allocated(ctx, off, n)
			if err != nil {
				return err
			}
			cp := newCopier(func(int64) {})
			for _, r := range runs {
				for o := r[0]; o < r[0]+r[1]; o += resyncChunk {
					cn := min(resyncChunk, r[0]+r[1]-o)
					cp.run(cn, func() error { return e.copyRange(ctx, c, o, cn, prog) })
				}
			}
			if !fresh {
				// The target may hold stale data (an earlier, aborted
				// pass wrote to it) where the source has holes.
				for _, g := range gaps(runs, off, n) {
					cp.run(g[1], func() error { return e.clearGap(ctx, c, g[0], g[1], prog) })
				}
			}
			if err := cp.wait(); err != nil {
				return err
			}
			prog.done.Add(n)
		}
		return nil
	default:
		prog.total.Store(e.cfg.Size)
		for off := int64(0); off < e.cfg.Size; off += ExtentSize {
			n := min(ExtentSize, e.cfg.Size-off)
			differ, err := e.compareExtent(ctx, c, off, n, prog)
			if err != nil {
				return err
			}
			if differ {
				prog.repaired.Add(1)
			}
			prog.done.Add(n)
		}
		return nil
	}
}

// gaps returns the parts of [off, off+n) that runs (sorted, from
// Allocated) do not cover.
func gaps(runs [][2]int64, off, n int64) [][2]int64 {
	var out [][2]int64
	pos := off
	for _, r := range runs {
		if r[0] > pos {
			out = append(out, [2]int64{pos, r[0] - pos})
		}
		pos = max(pos, r[0]+r[1])
	}
	if end := off + n; pos < end {
		out = append(out, [2]int64{pos, end - pos})
	}
	return out
}

// lockAndAsk locks r against application writes and sends req to the
// resync source (an in-sync replica) in the same step, so the source
// answers as of the lock. The caller unlocks r (unlockRangeLocked).
func (e *Engine) lockAndAsk(r byteRange, req wire.Frame, rbuf []byte) (target, *call, error) {
	e.order.Lock()
	defer e.order.Unlock()
	src, err := e.sourceLocked()
	if err != nil {
		return target{}, nil, err
	}
	e.lockRangeLocked(r)
	return src, src.c.start(req, rbuf), nil
}

// clearGap makes [off, off+n), unallocated on the source when the pass
// asked, read as zeroes on the target: with the range locked against
// writes it asks the source again and trims the target if it is still a
// hole there, or copies it (a write landed meanwhile).
func (e *Engine) clearGap(ctx context.Context, c *replicaClient, off, n int64, prog *resyncProgress) error {
	r := byteRange{off, n}
	src, ac, err := e.lockAndAsk(r, wire.Frame{Type: wire.FrameAllocated, Offset: uint64(off), Length: uint64(n)}, nil)
	if err != nil {
		return err
	}
	reply, err := src.c.wait(ac)
	e.order.Lock()
	var tc *call
	if err == nil && len(reply.Payload) == 0 {
		tc = c.start(wire.Frame{Type: wire.FrameTrim, Offset: uint64(off), Length: uint64(n)}, nil)
	}
	e.unlockRangeLocked(r)
	e.order.Unlock()
	if err != nil {
		return err
	}
	if tc != nil {
		_, err = c.wait(tc)
		return err
	}
	for o := off; o < off+n; o += resyncChunk {
		if err := e.copyRange(ctx, c, o, min(resyncChunk, off+n-o), prog); err != nil {
			return err
		}
	}
	return nil
}

// sourceLocked picks the in-sync replica resync reads from. Callers hold order.
func (e *Engine) sourceLocked() (target, error) {
	if len(e.targets.inSync) == 0 {
		return target{}, fmt.Errorf("%w: volume %s: nothing to resync from", ErrNoReplicas, e.cfg.Volume)
	}
	for _, t := range e.targets.inSync {
		if t.p.cfg.Local {
			return t, nil
		}
	}
	return e.targets.inSync[0], nil
}

// lockedLocked reports whether resync is copying a range overlapping
// [off, off+n). Callers hold order.
func (e *Engine) lockedLocked(off, n int64) bool {
	for _, r := range e.locks {
		if r.overlaps(off, n) {
			return true
		}
	}
	return false
}

func (e *Engine) lockRangeLocked(r byteRange) { e.locks = append(e.locks, r) }

func (e *Engine) unlockRangeLocked(r byteRange) {
	for i, l := range e.locks {
		if l == r {
			e.locks = append(e.locks[:i], e.locks[i+1:]...)
			break
		}
	}
	e.orderCond.Broadcast()
}

// copyRange copies [off, off+n) from an in-sync replica to c, with the
// range locked against application writes from the source read until the
// copy is sent. Zero data is sent as a trim, which keeps holes holes and
// costs no bandwidth. The bits of a bitmap resync are NOT cleared here:
// the copy is only in the target's page cache, and a bitmap persisted now
// must still name it. They go all at once when the target has flushed
// (rejoin).
func (e *Engine) copyRange(ctx context.Context, c *replicaClient, off, n int64, prog *resyncProgress) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	buf := make([]byte, n)
	r := byteRange{off, n}
	src, rc, err := e.lockAndAsk(r, wire.Frame{Type: wire.FrameRead, Offset: uint64(off), Length: uint64(n)}, buf)
	if err != nil {
		return err
	}
	_, err = src.c.wait(rc)
	e.order.Lock()
	var wc *call
	var zero bool
	if err == nil {
		// Only a reply that arrived: after a timeout the reader may still
		// fill buf with the late one.
		zero = bytes.Equal(buf, zeroChunk[:n])
		if zero {
			wc = c.start(wire.Frame{Type: wire.FrameTrim, Offset: uint64(off), Length: uint64(n)}, nil)
		} else {
			wc = c.start(wire.Frame{Type: wire.FrameWrite, Offset: uint64(off), Payload: buf}, nil)
		}
	}
	e.unlockRangeLocked(r)
	e.order.Unlock()
	if err == nil {
		_, err = c.wait(wc)
	}
	if err != nil {
		return err
	}
	if zero {
		return nil
	}
	prog.sent.Add(n)
	return e.throttle(ctx, prog, n)
}

// throttle waits until the n bytes just sent fit under ResyncRate
// (prog's token bucket, golang.org/x/time/rate).
func (e *Engine) throttle(ctx context.Context, prog *resyncProgress, n int64) error {
	if prog.limit == nil {
		return nil
	}
	for n > 0 {
		k := min(n, int64(prog.limit.Burst()))
		if err := prog.limit.WaitN(ctx, int(k)); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// compareExtent compares [off, off+n) between an in-sync replica and c by
// block checksums and copies the blocks that differ, with the range locked
// throughout. It reports whether anything differed.
func (e *Engine) compareExtent(ctx context.Context, c *replicaClient, off, n int64, prog *resyncProgress) (bool, error) {
	r := byteRange{off, n}
	e.order.Lock()
	src, err := e.sourceLocked()
	if err != nil {
		e.order.Unlock()
		return false, err
	}
	e.lockRangeLocked(r)
	req := wire.Frame{Type: wire.FrameChecksum, Offset: uint64(off), Length: uint64(n)}
	sc, tc := src.c.start(req, nil), c.start(req, nil)
	e.order.Unlock()
	defer func() {
		e.order.Lock()
		e.unlockRangeLocked(r)
		e.order.Unlock()
	}()
	sr, err := src.c.wait(sc)
	if err != nil {
		return false, err
	}
	tr, err := c.wait(tc)
	if err != nil {
		return false, err
	}
	runs := differingRuns(sr.Payload, tr.Payload, off)
	for _, run := range runs {
		for o := run.off; o < run.off+run.n; o += resyncChunk {
			if err := e.copyLocked(ctx, src, c, o, min(resyncChunk, run.off+run.n-o), prog); err != nil {
				return false, err
			}
		}
	}
	return len(runs) > 0, nil
}

// copyLocked copies a range the caller has locked against writes.
func (e *Engine) copyLocked(ctx context.Context, src target, c *replicaClient, off, n int64, prog *resyncProgress) error {
	buf := make([]byte, n)
	if _, err := src.c.wait(src.c.start(wire.Frame{Type: wire.FrameRead, Offset: uint64(off), Length: uint64(n)}, buf)); err != nil {
		return err
	}
	if _, err := c.wait(c.start(wire.Frame{Type: wire.FrameWrite, Offset: uint64(off), Payload: buf}, nil)); err != nil {
		return err
	}
	if prog != nil {
		prog.sent.Add(n)
		return e.throttle(ctx, prog, n)
	}
	return nil
}

// differingRuns returns the byte runs where two checksum lists (8 bytes per
// block, starting at byte offset base) differ.
func differingRuns(a, b []byte, base int64) []byteRange {
	var out []byteRange
	for i := 0; i+8 <= len(a) || i+8 <= len(b); i += 8 {
		same := i+8 <= len(a) && i+8 <= len(b) && binary.BigEndian.Uint64(a[i:]) == binary.BigEndian.Uint64(b[i:])
		if same {
			continue
		}
		off := base + int64(i/8)*BlockSize
		if len(out) > 0 && out[len(out)-1].off+out[len(out)-1].n == off {
			out[len(out)-1].n += BlockSize
		} else {
			out = append(out, byteRange{off, BlockSize})
		}
	}
	return out
}

// allocated asks an in-sync replica which parts of [off, off+n) hold data.
func (e *Engine) allocated(ctx context.Context, off, n int64) ([][2]int64, error) {
	e.order.Lock()
	src, err := e.sourceLocked()
	e.order.Unlock()
	if err != nil {
		return nil, err
	}
	reply, err := src.c.wait(src.c.start(wire.Frame{Type: wire.FrameAllocated, Offset: uint64(off), Length: uint64(n)}, nil))
	if err != nil {
		return nil, err
	}
	var runs [][2]int64
	for p := reply.Payload; len(p) >= 16; p = p[16:] {
		runs = append(runs, [2]int64{int64(binary.BigEndian.Uint64(p)), int64(binary.BigEndian.Uint64(p[8:]))})
	}
	return runs, nil
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
