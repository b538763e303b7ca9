package sim

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/saddlebag/saddlebag/replication"
)

// opRec is one write or trim as its writer saw it. A multi-block op is
// shared by the blocks it covers.
type opRec struct {
	seq    uint32 // the writer's op number: identifies the version
	trim   bool
	fua    bool
	issued uint64 // event counter when issued
	// issuedAt and by: when, since the schedule began, and to which
	// primary's epoch it was issued (diagnostics).
	issuedAt time.Duration
	by       uint64
	losses   uint64 // unflushed-write losses the engines had found when it was issued
	acked    bool
	ackAt    uint64        // event counter when acknowledged
	epoch    uint64        // the primary that acknowledged it
	at       time.Duration // when it was acknowledged, since the schedule began
}

func (op *opRec) String() string {
	kind := "write"
	switch {
	case op.trim:
		kind = "trim"
	case op.fua:
		kind = "FUA write"
	}
	if !op.acked {
		return fmt.Sprintf("op %d (%s issued to epoch %d at %.3fs, unacknowledged)", op.seq, kind, op.by, op.issuedAt.Seconds())
	}
	return fmt.Sprintf("op %d (%s issued at %.3fs, acked at epoch %d, %.3fs)", op.seq, kind, op.issuedAt.Seconds(), op.epoch, op.at.Seconds())
}

// writer issues ops on its own block range, one at a time, so that per
// block the ops are totally ordered and the model knows which versions a
// block may hold.
type writer struct {
	id     int
	lo, hi int64 // block range [lo, hi)
	rng    *rand.Rand
	seq    uint32
	hist   [][]*opRec // per block of the range, in issue order

	issued, acked, flushes int
}

// blockSize is the unit the writers write and the checks compare.
const blockSize = replication.BlockSize

const blockMagic = 0x53424c4b // "SBLK"

// blockContent is the content of block blk written by writer w's op seq:
// a header naming it and a fill derived from it, so a read-back tells
// exactly which version (and whether the block is whole).
func blockContent(buf []byte, blk int64, w int, seq uint32) {
	binary.BigEndian.PutUint32(buf[0:], blockMagic)
	binary.BigEndian.PutUint64(buf[4:], uint64(blk))
	binary.BigEndian.PutUint32(buf[12:], uint32(w))
	binary.BigEndian.PutUint32(buf[16:], seq)
	x := uint64(blk)<<32 ^ uint64(seq) ^ uint64(w)<<56
	for i := 20; i+8 <= len(buf); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(buf[i:], x)
	}
}

// version identifies a block read back: zero, or (writer, seq); ok false
// for content no op ever wrote there (garbage, torn, misplaced).
func version(b []byte, blk int64) (zero bool, w int, seq uint32, ok bool) {
	if isZero(b) {
		return true, 0, 0, true
	}
	if binary.BigEndian.Uint32(b) != blockMagic || int64(binary.BigEndian.Uint64(b[4:])) != blk {
		return false, 0, 0, false
	}
	w, seq = int(binary.BigEndian.Uint32(b[12:])), binary.BigEndian.Uint32(b[16:])
	want := wantPool.Get().(*[]byte)
	defer wantPool.Put(want)
	blockContent(*want, blk, w, seq)
	return false, w, seq, bytes.Equal(*want, b)
}

var wantPool = sync.Pool{New: func() any { b := make([]byte, blockSize); return &b }}

var zeroBlock = make([]byte, blockSize)

func isZero(b []byte) bool { return bytes.Equal(b, zeroBlock) }

// run issues ops until stop is closed.
func (w *writer) run(s *simulation, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		p := s.pick(w.id)
		if p == nil {
			time.Sleep(time.Millisecond)
			continue
		}
		err := w.step(s, p)
		if err != nil {
			if errors.Is(err, replication.ErrFenced) {
				s.leaveZombie(w.id, p)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// opDeadline bounds one op: every engine wait is bounded by the replica
// timeout, so an op still running after this is stuck in the engine.
const opDeadline = 5 * time.Second

// call runs one engine call for p, bounded by opDeadline. A panic or a
// call that never returns is a finding: it is reported and the primary
// abandoned (it may hold its locks, so it is not even closed), as its
// process would be dead or stuck.
func (w *writer) call(s *simulation, p *primary, what string, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
	done := make(chan error, 1)
	go func() {
		defer cancel()
		defer func() {
			if v := recover(); v != nil {
				s.engineBroken(p, fmt.Sprintf("panicked: %v in %s", v, panicSite()))
				done <- fmt.Errorf("engine panicked: %v", v)
			}
		}()
		done <- f(ctx)
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(opDeadline):
		s.engineBroken(p, fmt.Sprintf("a %s did not return in %s (deadlock?)", what, opDeadline))
		return fmt.Errorf("engine stuck")
	}
}

// step issues one random op to primary p and records it.
func (w *writer) step(s *simulation, p *primary) error {
	n := w.hi - w.lo
	r := w.rng.IntN(100)
	if r >= 88 {
		losses := s.unflushedLosses()
		issued := s.events.Add(1)
		err := w.call(s, p, "flush", func(ctx context.Context) error { return p.eng.Flush(ctx) })
		if err == nil {
			s.flushed(flushRec{issued: issued, losses: losses, epoch: p.epoch, at: time.Since(s.began)})
			w.flushes++
		}
		return err
	}
	rec := &opRec{seq: w.seq}
	w.seq++
	var first, count int64
	switch {
	case r < 72:
		count = 1 + w.rng.Int64N(8)
		rec.fua = r >= 62
	case r < 86:
		rec.trim, count = true, 1+w.rng.Int64N(16)
	default: // a big trim: the whole range or half of it, several extents
		rec.trim, count = true, n/(1+w.rng.Int64N(2))
	}
	count = min(count, n)
	first = w.lo + w.rng.Int64N(n-count+1)
	for b := first; b < first+count; b++ {
		w.hist[b-w.lo] = append(w.hist[b-w.lo], rec)
	}
	w.issued++
	rec.losses = s.unflushedLosses()
	rec.issued = s.events.Add(1)
	rec.issuedAt, rec.by = time.Since(s.began), p.epoch
	var err error
	if rec.trim {
		err = w.call(s, p, "trim", func(ctx context.Context) error {
			return p.eng.Trim(ctx, first*blockSize, count*blockSize)
		})
	} else {
		buf := make([]byte, count*blockSize)
		for i := int64(0); i < count; i++ {
			blockContent(buf[i*blockSize:(i+1)*blockSize], first+i, w.id, rec.seq)
		}
		err = w.call(s, p, "write", func(ctx context.Context) error {
			return p.eng.WriteAt(ctx, buf, first*blockSize, rec.fua)
		})
	}
	if err == nil {
		rec.acked, rec.ackAt, rec.epoch, rec.at = true, s.events.Add(1), p.epoch, time.Since(s.began)
		w.acked++
		s.checkFenced(p, rec)
	} else if strings.Contains(err.Error(), errBlip) {
		s.blipFailed(p, rec, err)
	}
	return err
}

// allowed reports whether a block of this writer may read back as the
// given version, and describes what it should hold otherwise. durable
// says whether an acknowledged op must have survived (see
// simulation.mustSurvive).
func (w *writer) allowed(blk int64, data []byte, durable func(*opRec) bool, why func(*opRec) string) (bool, string) {
	ops := w.hist[blk-w.lo]
	k := -1 // the newest op that must have survived
	for i, op := range ops {
		if op.acked && durable(op) {
			k = i
		}
	}
	zero, wid, seq, ok := version(data, blk)
	if !ok {
		return false, fmt.Sprintf("block %d holds content no write put there", blk)
	}
	describe := func() string {
		if k < 0 {
			return "nothing acknowledged"
		}
		return fmt.Sprintf("%s or newer%s", ops[k], why(ops[k]))
	}
	if zero {
		if k < 0 {
			return true, ""
		}
		for _, op := range ops[k:] {
			if op.trim {
				return true, ""
			}
		}
		return false, fmt.Sprintf("block %d reads zero, want %s", blk, describe())
	}
	if wid != w.id {
		return false, fmt.Sprintf("block %d holds writer %d's data", blk, wid)
	}
	for i, op := range ops {
		if op.seq == seq && !op.trim {
			if i >= k {
				return true, ""
			}
			return false, fmt.Sprintf("block %d reads %s, want %s", blk, op, describe())
		}
	}
	return false, fmt.Sprintf("block %d reads op %d, never issued there", blk, seq)
}
