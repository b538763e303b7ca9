package replication

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// ExtentSize is the unit of the activity log and of checksum comparison.
const ExtentSize = 4 << 20

// activityLog is the primary's view of the activity log: the extents that
// writes may be touching. Before the first write to a cold extent the
// primary makes the extent hot on every in-sync replica (durably); after a
// primary crash, a new primary need compare only hot extents to make the
// replicas identical. Extents cool down (leave the log) least recently used
// first, only when no write to them is in flight, and only after the
// bitmaps of replicas that are behind are persisted: writes happen only in
// hot extents, so hot extents plus persisted bitmaps cover every block a
// behind replica can miss.
type activityLog struct {
	mu    sync.Mutex
	hot   map[uint64]*alExtent
	clock uint64
	cap   int
	// released is closed and replaced whenever a request releases its
	// extents: a request that finds the log full of extents in flight
	// waits on it.
	released chan struct{}
	// update serialises changes of the log on the replicas; lock order:
	// update, then Engine.bmMu, then Engine.stateMu, then Engine.order.
	update sync.Mutex
}

type alExtent struct {
	inflight int
	used     uint64
	evicting bool // being removed: writes must wait for the update lock
}

func (a *activityLog) init(capacity int) {
	a.cap = capacity
	a.hot = map[uint64]*alExtent{}
	a.released = make(chan struct{})
}

// extentSpan returns the first and last extent [off, off+n) touches.
func extentSpan(off, n int64) (uint64, uint64) {
	return uint64(off / ExtentSize), uint64((off + max(n, 1) - 1) / ExtentSize)
}

// maxActivityExtents bounds the activity log: its extent numbers must fit
// a replica's metadata slot (16 KiB of JSON) with room to spare.
const maxActivityExtents = 512

// all returns every extent in the log, those being evicted included: their
// writes may not be flushed everywhere yet.
func (a *activityLog) all() []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]uint64, 0, len(a.hot))
	for x := range a.hot {
		out = append(out, x)
	}
	return out
}

// tryAcquire takes the extents if all are hot.
func (a *activityLog) tryAcquire(first, last uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for x := first; x <= last; x++ {
		if ext := a.hot[x]; ext == nil || ext.evicting {
			return false
		}
	}
	a.clock++
	for x := first; x <= last; x++ {
		a.hot[x].inflight++
		a.hot[x].used = a.clock
	}
	return true
}

// list returns the hot extents, sorted.
func (a *activityLog) list() []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]uint64, 0, len(a.hot))
	for x, ext := range a.hot {
		if !ext.evicting {
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out
}

func activityFrame(extents []uint64) wire.Frame {
	p := make([]byte, 0, 8*len(extents))
	for _, x := range extents {
		p = binary.BigEndian.AppendUint64(p, x)
	}
	return wire.Frame{Type: wire.FrameActivity, Payload: p}
}

// alAcquire makes extents first..last hot on every in-sync replica and
// counts a write in flight in each; alRelease undoes the count. The log
// never holds more than its capacity: when every extent in it has a
// request in flight, alAcquire waits for one to end.
//
// Extents leave the log only after a flush on every replica receiving
// writes, so the log always covers every write that some replica may have
// acknowledged from its page cache only (markUnflushed).
func (e *Engine) alAcquire(ctx context.Context, first, last uint64) error {
	if n := last - first + 1; n > uint64(e.al.cap) {
		// Callers split requests so this cannot happen; never wait for
		// room that can never be made.
		return fmt.Errorf("%w: a request spanning %d extents exceeds the activity log's %d", ErrInvalid, n, e.al.cap)
	}
	for {
		done, err := e.alTryUpdate(ctx, first, last)
		if done || err != nil {
			return err
		}
		e.al.mu.Lock()
		ch := e.al.released
		e.al.mu.Unlock()
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// alTryUpdate is one attempt of alAcquire: false when the log is full of
// extents in flight.
func (e *Engine) alTryUpdate(ctx context.Context, first, last uint64) (bool, error) {
	a := &e.al
	if a.tryAcquire(first, last) {
		return true, nil
	}
	a.update.Lock()
	defer a.update.Unlock()
	if a.tryAcquire(first, last) {
		return true, nil
	}
	a.mu.Lock()
	keep := map[uint64]bool{}
	for x, ext := range a.hot {
		keep[x] = !ext.evicting
	}
	for x := first; x <= last; x++ {
		keep[x] = true
	}
	var candidates []uint64
	for x, ext := range a.hot {
		if ext.inflight == 0 && (x < first || x > last) {
			candidates = append(candidates, x)
		}
	}
	slices.SortFunc(candidates, func(x, y uint64) int { return cmp.Compare(a.hot[x].used, a.hot[y].used) })
	size := 0
	for _, k := range keep {
		if k {
			size++
		}
	}
	if size-len(candidates) > a.cap {
		a.mu.Unlock()
		return false, nil // full of extents in flight: wait for one
	}
	var evict []uint64
	for over := size - a.cap; over > 0 && len(candidates) > 0; over-- {
		x := candidates[0]
		candidates = candidates[1:]
		a.hot[x].evicting = true
		keep[x] = false
		evict = append(evict, x)
	}
	var next []uint64
	for x, k := range keep {
		if k {
			next = append(next, x)
		}
	}
	slices.Sort(next)
	a.mu.Unlock()

	err := error(nil)
	if len(evict) > 0 {
		// Make the evicted extents' writes durable everywhere first, and
		// the bitmaps that now must cover them without the log.
		err = e.apply(ctx, wire.Frame{Type: wire.FrameFlush})
		if err == nil {
			err = e.persistBitmaps(ctx, false)
		}
	}
	sent := err == nil
	if sent {
		err = e.broadcast(ctx, activityFrame(next))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		for _, x := range evict {
			if sent {
				// The new log may have reached replicas although its
				// outcome failed (a replica dropped on it, its record not
				// written before ctx ended): their log may no longer name
				// the evicted extents, so neither may ours, or a later
				// write there would find them hot and go out uncovered.
				// They were flushed everywhere, and their bitmaps
				// persisted, as for an eviction that succeeded.
				delete(a.hot, x)
			} else {
				a.hot[x].evicting = false
			}
		}
		return false, err
	}
	for _, x := range evict {
		delete(a.hot, x)
	}
	a.clock++
	for x := first; x <= last; x++ {
		ext := a.hot[x]
		if ext == nil {
			ext = &alExtent{}
			a.hot[x] = ext
		}
		ext.inflight++
		ext.used = a.clock
	}
	return true, nil
}

func (e *Engine) alRelease(first, last uint64) {
	a := &e.al
	a.mu.Lock()
	defer a.mu.Unlock()
	for x := first; x <= last; x++ {
		a.hot[x].inflight--
	}
	close(a.released)
	a.released = make(chan struct{})
}

// clearActivityLog empties the log on the replicas; only for a clean
// shutdown, when no write is in flight.
func (e *Engine) clearActivityLog(ctx context.Context) error {
	a := &e.al
	a.update.Lock()
	defer a.update.Unlock()
	if err := e.broadcast(ctx, activityFrame(nil)); err != nil {
		return err
	}
	a.mu.Lock()
	a.hot = map[uint64]*alExtent{}
	a.mu.Unlock()
	return nil
}

// A persisted peer bitmap is a version byte (4), the subject it describes
// (the replica's incarnation, 0 when unknown, its in-sync generation and
// its resync-target generation, 8 bytes each), then the encoded runs. The
// leading version byte makes an empty bitmap ("misses nothing") differ
// from none ("history unknown"); the incarnation keeps a bitmap from being
// applied to a replica that was wiped and made again, the generations
// from one that has been in sync since, or a resync target since a
// member left (either way, with writes the bitmap's holder never saw).
// Version 3 (no target generation) is read with target generation 0,
// which a replica never made a target by this version reports too; a
// bitmap of version 2 (no generation) is read as unknown: that replica is
// compared whole.
const peerBitmapVersion = 4

const peerBitmapHeader = 1 + 3*8

func encodePeerBitmap(of subject, b *Bitmap) []byte {
	enc := binary.BigEndian.AppendUint64([]byte{peerBitmapVersion}, of.inc)
	enc = binary.BigEndian.AppendUint64(enc, of.gen)
	enc = binary.BigEndian.AppendUint64(enc, of.target)
	return append(enc, b.Encode(wire.MaxControlPayload-1024)...)
}

// decodePeerBitmap parses a persisted peer bitmap into a bitmap of a
// volume of size bytes, with the subject it describes.
func decodePeerBitmap(p []byte, size int64) (of subject, b *Bitmap, err error) {
	header := peerBitmapHeader
	switch {
	case len(p) > 0 && p[0] == 3:
		header = 1 + 2*8
	case len(p) > 0 && p[0] == peerBitmapVersion:
	default:
		return subject{}, nil, fmt.Errorf("%w: persisted bitmap: unknown format (an older version's bitmaps carry no generation)", ErrInvalid)
	}
	if len(p) < header {
		return subject{}, nil, fmt.Errorf("%w: persisted bitmap: %d bytes, shorter than its header", ErrInvalid, len(p))
	}
	b = NewBitmap(size)
	if err := b.MergeEncoded(p[header:]); err != nil {
		return subject{}, nil, err
	}
	of = subject{inc: binary.BigEndian.Uint64(p[1:9]), gen: binary.BigEndian.Uint64(p[9:17])}
	if header == peerBitmapHeader {
		of.target = binary.BigEndian.Uint64(p[17:25])
	}
	return of, b, nil
}

// persistedFormLocked is what the in-sync replicas store for p: its
// bitmap with the extents it may have lost unflushed (a later primary
// cannot tell whether they were lost), or nil (nothing stored) when it is
// in sync or its history is unknown. Callers hold stateMu.
func (e *Engine) persistedFormLocked(p *peer) []byte {
	if p.state == StateInSync || p.dirty == nil {
		return nil
	}
	b := p.dirty
	if len(p.unflushed) > 0 {
		b = NewBitmap(e.cfg.Size)
		b.Merge(p.dirty)
		for x := range p.unflushed {
			b.SetRange(int64(x)*ExtentSize, ExtentSize)
		}
	}
	return encodePeerBitmap(p.dirtyOf, b)
}

// persistBitmaps stores the bitmap of every replica that is behind on the
// in-sync replicas, when it changed since it was last stored (or always,
// with force), so a new primary can resync them without a full compare.
func (e *Engine) persistBitmaps(ctx context.Context, force bool) error {
	e.bmMu.Lock()
	defer e.bmMu.Unlock()
	return e.persistBitmapsLocked(ctx, force)
}

// persistBitmapsLocked is persistBitmaps for a caller holding bmMu.
func (e *Engine) persistBitmapsLocked(ctx context.Context, force bool) error {
	type pending struct {
		p       *peer
		enc     []byte
		changes uint64
	}
	var todo []pending
	e.stateMu.Lock()
	for _, p := range e.peers {
		if p.state == StateInSync {
			continue
		}
		if p.dirty == nil {
			// Its history is unknown (it is compared whole): a bitmap
			// persisted for it earlier no longer names all it misses, and
			// a later primary must not trust it.
			if p.persisted != 0 {
				todo = append(todo, pending{p, nil, 0})
			}
			continue
		}
		if ch := p.dirty.Changes(); force || ch != p.persisted {
			todo = append(todo, pending{p, e.persistedFormLocked(p), ch})
		}
	}
	e.stateMu.Unlock()
	for _, t := range todo {
		if err := e.broadcast(ctx, wire.Frame{Type: wire.FramePutBitmap, Payload: wire.PeerPayload(t.p.cfg.Addr, t.enc)}); err != nil {
			return err
		}
		e.stateMu.Lock()
		t.p.persisted = t.changes
		e.stateMu.Unlock()
	}
	return nil
}
