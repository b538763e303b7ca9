package replication

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync"
)

// Bitmap records which BlockSize blocks of a volume a replica is missing.
// It is safe for concurrent use.
type Bitmap struct {
	mu      sync.Mutex
	words   []uint64
	nblocks int64
	count   int64
	changes uint64 // bumped by every change, so persisters can tell
}

// NewBitmap returns an all-clean bitmap for a volume of size bytes.
func NewBitmap(size int64) *Bitmap {
	n := (size + BlockSize - 1) / BlockSize
	return &Bitmap{words: make([]uint64, (n+63)/64), nblocks: n}
}

// blockSpan returns the blocks that [off, off+n) touches.
func (b *Bitmap) blockSpan(off, n int64) (int64, int64) {
	if n <= 0 {
		return 0, 0
	}
	first := off / BlockSize
	last := (off + n - 1) / BlockSize
	if last >= b.nblocks {
		last = b.nblocks - 1
	}
	return first, last + 1
}

// SetRange marks every block that [off, off+n) touches.
func (b *Bitmap) SetRange(off, n int64) {
	first, end := b.blockSpan(off, n)
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := first; i < end; i++ {
		w, m := i/64, uint64(1)<<(i%64)
		if b.words[w]&m == 0 {
			b.words[w] |= m
			b.count++
		}
	}
	b.changes++
}

// ClearRange clears the blocks that [off, off+n) touches.
func (b *Bitmap) ClearRange(off, n int64) {
	first, end := b.blockSpan(off, n)
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := first; i < end; i++ {
		w, m := i/64, uint64(1)<<(i%64)
		if b.words[w]&m != 0 {
			b.words[w] &^= m
			b.count--
		}
	}
	b.changes++
}

// Count returns the number of dirty blocks.
func (b *Bitmap) Count() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.count
}

// Changes returns a counter that moves whenever the bitmap changes.
func (b *Bitmap) Changes() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.changes
}

// NextRun returns the first run of dirty blocks at or after byte offset
// from, as a byte range at most max bytes long; ok is false when none is left.
func (b *Bitmap) NextRun(from, max int64) (off, n int64, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := from / BlockSize
	for i < b.nblocks {
		w := b.words[i/64] >> (i % 64)
		if w == 0 {
			i = (i/64 + 1) * 64
			continue
		}
		i += int64(bits.TrailingZeros64(w))
		break
	}
	if i >= b.nblocks {
		return 0, 0, false
	}
	start := i
	for i < b.nblocks && b.words[i/64]&(1<<(i%64)) != 0 && (i-start+1)*BlockSize <= max {
		i++
	}
	return start * BlockSize, (i - start) * BlockSize, true
}

// Merge sets every block o has set (o describes a volume of the same size).
func (b *Bitmap) Merge(o *Bitmap) {
	for _, r := range o.runs() {
		b.SetRange(r.Start*BlockSize, r.Len*BlockSize)
	}
}

// blockRun is a run of blocks [Start, Start+Len).
type blockRun struct{ Start, Len int64 }

func (b *Bitmap) runs() []blockRun {
	var out []blockRun
	for off := int64(0); ; {
		o, n, ok := b.NextRun(off, b.nblocks*BlockSize)
		if !ok {
			return out
		}
		out = append(out, blockRun{o / BlockSize, n / BlockSize})
		off = o + n
	}
}

// Encode returns the dirty blocks as a compact list of runs that fits in
// max bytes. When the exact list does not fit, runs are widened to coarser
// alignments until it does: a superset of the dirty blocks is always safe
// to resync, a subset never is.
func (b *Bitmap) Encode(max int) []byte {
	runs := b.runs()
	for shift := uint(0); ; shift++ {
		enc := encodeRuns(coarsen(runs, shift))
		if len(enc) <= max || shift > 62 {
			return enc
		}
	}
}

func coarsen(runs []blockRun, shift uint) []blockRun {
	if shift == 0 {
		return runs
	}
	unit := int64(1) << shift
	var out []blockRun
	for _, r := range runs {
		s := r.Start &^ (unit - 1)
		e := (r.Start + r.Len + unit - 1) &^ (unit - 1)
		if len(out) > 0 && out[len(out)-1].Start+out[len(out)-1].Len >= s {
			last := &out[len(out)-1]
			last.Len = max(last.Len, e-last.Start)
			continue
		}
		out = append(out, blockRun{s, e - s})
	}
	return out
}

// encodeRuns writes runs as uvarint pairs: the gap since the previous run's
// end, then the length.
func encodeRuns(runs []blockRun) []byte {
	var out []byte
	prev := int64(0)
	for _, r := range runs {
		out = binary.AppendUvarint(out, uint64(r.Start-prev))
		out = binary.AppendUvarint(out, uint64(r.Len))
		prev = r.Start + r.Len
	}
	return out
}

// MergeEncoded marks the runs of an encoded bitmap (from Encode) dirty.
func (b *Bitmap) MergeEncoded(enc []byte) error {
	prev := uint64(0)
	for len(enc) > 0 {
		gap, n1 := binary.Uvarint(enc)
		if n1 <= 0 {
			return fmt.Errorf("%w: bitmap encoding: bad gap", ErrInvalid)
		}
		length, n2 := binary.Uvarint(enc[n1:])
		if n2 <= 0 || length == 0 {
			return fmt.Errorf("%w: bitmap encoding: bad run length", ErrInvalid)
		}
		enc = enc[n1+n2:]
		start := prev + gap
		if start < prev || start+length < start || start+length > uint64(b.nblocks) {
			return fmt.Errorf("%w: bitmap run [%d, +%d) outside %d blocks", ErrInvalid, start, length, b.nblocks)
		}
		b.SetRange(int64(start)*BlockSize, int64(length)*BlockSize)
		prev = start + length
	}
	return nil
}
