package replication

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// The Device methods: requests cut to the wire's and the activity log's
// bounds, writes, flushes and trims through replicate (engine_write.go),
// reads from one in-sync replica.

func (e *Engine) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > e.cfg.Size || n > e.cfg.Size-off {
		return fmt.Errorf("%w: [%d, %d) outside volume %s of %d bytes", ErrOutOfRange, off, off+n, e.cfg.Volume, e.cfg.Size)
	}
	return nil
}

// WriteAt implements Device. Writes larger than wire.MaxIOSize (or than the
// activity log spans) go out as several requests.
func (e *Engine) WriteAt(ctx context.Context, p []byte, off int64, fua bool) (err error) {
	defer e.io[OpWrite].done(time.Now(), int64(len(p)), &err)
	if err := e.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	var flags uint16
	if fua {
		flags = wire.FlagFUA
	}
	// A piece spans at most as many extents as the activity log holds.
	limit := min(wire.MaxIOSize, (e.al.cap-1)*ExtentSize)
	for len(p) > 0 {
		n := min(len(p), limit)
		if err := e.replicate(ctx, wire.Frame{Type: wire.FrameWrite, Flags: flags, Offset: uint64(off), Payload: p[:n]}); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Flush implements Device.
//
// When the last in-sync replica's host lost power since the previous
// flush, the writes acknowledged since then are gone everywhere: every
// flush in flight when that was found fails (ErrUnflushedLost), and so
// does the next one started after it, once, as Linux reports a writeback
// error to the next fsync, instead of claiming them durable.
func (e *Engine) Flush(ctx context.Context) (err error) {
	defer e.io[OpFlush].done(time.Now(), 0, &err)
	before := e.lostSeq.Load()
	if err := e.replicate(ctx, wire.Frame{Type: wire.FrameFlush}); err != nil {
		return err
	}
	now := e.lostSeq.Load()
	if seen := e.lostSeen.Swap(now); now != before || seen != now {
		return fmt.Errorf("volume %s: %w", e.cfg.Volume, ErrUnflushedLost)
	}
	return nil
}

// Trim implements Device. A large trim goes out as pieces of at most
// trimPieceExtents extents each, so that one request never makes the
// activity log outgrow its bound (a blkdiscard of a whole volume, a
// WRITE_ZEROES of many GiB).
func (e *Engine) Trim(ctx context.Context, off, n int64) (err error) {
	defer e.io[OpTrim].done(time.Now(), n, &err)
	if err := e.checkRange(off, n); err != nil {
		return err
	}
	piece := int64(max(1, e.al.cap/8)) * ExtentSize
	for n > 0 {
		// End each piece on an extent boundary so it spans the fewest.
		l := min(n, piece-off%ExtentSize)
		if err := e.replicate(ctx, wire.Frame{Type: wire.FrameTrim, Offset: uint64(off), Length: uint64(l)}); err != nil {
			return err
		}
		off, n = off+l, n-l
	}
	return nil
}

// dataRange returns the byte range a request changes, if any.
func dataRange(req *wire.Frame) (int64, int64, bool) {
	switch req.Type {
	case wire.FrameWrite:
		return int64(req.Offset), int64(len(req.Payload)), true
	case wire.FrameTrim:
		return int64(req.Offset), int64(req.Length), true
	}
	return 0, 0, false
}

// ReadAt implements Device: it reads from the local replica when that is in
// sync, otherwise from an in-sync peer, moving on to the next one (and
// dropping the failed one) on error.
func (e *Engine) ReadAt(ctx context.Context, p []byte, off int64) (err error) {
	defer e.io[OpRead].done(time.Now(), int64(len(p)), &err)
	if err := e.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	for len(p) > wire.MaxIOSize {
		if err := e.readAt(ctx, p[:wire.MaxIOSize], off); err != nil {
			return err
		}
		p, off = p[wire.MaxIOSize:], off+wire.MaxIOSize
	}
	return e.readAt(ctx, p, off)
}

func (e *Engine) readAt(ctx context.Context, p []byte, off int64) error {
	for {
		if e.fenced.Load() {
			return e.fencedErr()
		}
		e.order.Lock()
		set := e.targets
		e.order.Unlock()
		if len(set.inSync) == 0 {
			return fmt.Errorf("%w: volume %s", ErrNoReplicas, e.cfg.Volume)
		}
		src, ok := e.readSource(set)
		if !ok {
			// Every in-sync replica is reconnecting: read once one is back.
			if werr := e.waitReconnect(ctx); werr != nil {
				return werr
			}
			continue
		}
		_, err := src.c.wait(src.c.start(wire.Frame{Type: wire.FrameRead, Offset: uint64(off), Length: uint64(len(p))}, p))
		if err == nil {
			return e.passGate(ctx)
		}
		if errors.Is(err, wire.ErrStaleEpoch) {
			e.fence(err)
			return e.fencedErr()
		}
		kept, derr := e.drop(ctx, map[*peer]error{src.p: err}, nil, 0, 0, false)
		if errors.Is(derr, errReconnecting) || (derr == nil && kept == src.p && src.c.failure() != nil) {
			// The last in-sync replica's connection broke: read again
			// once it is back.
			if werr := e.waitReconnect(ctx); werr != nil {
				return werr
			}
			continue
		}
		if derr != nil {
			return derr
		}
		if kept == src.p {
			return fmt.Errorf("volume %s: read failed on its last in-sync replica: %w", e.cfg.Volume, err)
		}
	}
}

// readSource picks the in-sync replica to read from: the local one, or
// the next one in turn, among those with a working connection; false if
// none has one.
func (e *Engine) readSource(set *targetSet) (target, bool) {
	up := connected(set)
	if len(up) == 0 {
		return target{}, false
	}
	for _, t := range up {
		if t.p.cfg.Local {
			return t, true
		}
	}
	return up[int(e.readNext.Add(1))%len(up)], true
}

// connected returns the in-sync targets with a working connection.
func connected(set *targetSet) []target {
	var up []target
	for _, t := range set.inSync {
		if t.c != nil && t.c.failure() == nil {
			up = append(up, t)
		}
	}
	return up
}
