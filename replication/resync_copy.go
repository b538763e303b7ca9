package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	"golang.org/x/sync/errgroup"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// The copy passes of a resync: ranges copied (bitmap and full modes) or
// compared by checksums (checksum mode) from an in-sync source, in
// parallel, each range locked against writes while it is copied.

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
