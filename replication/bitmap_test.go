package replication

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/wire"
)

func TestBitmapRunsAndEncoding(t *testing.T) {
	t.Parallel()
	b := NewBitmap(1 << 30)
	b.SetRange(0, 1)             // block 0
	b.SetRange(8192, 8192)       // blocks 2-3
	b.SetRange(1<<20-1, 2)       // blocks 255-256
	b.SetRange(1<<30-4096, 4096) // last block
	must.Eq(t, int64(6), b.Count())
	off, n, ok := b.NextRun(4096, 1<<20)
	must.True(t, ok)
	must.Eq(t, int64(8192), off)
	must.Eq(t, int64(8192), n)
	off, n, _ = b.NextRun(off+n, 4096) // capped at max bytes
	must.Eq(t, int64(255*4096), off)
	must.Eq(t, int64(4096), n)

	c := NewBitmap(1 << 30)
	must.NoError(t, c.MergeEncoded(b.Encode(1<<16)))
	must.Eq(t, b.runs(), c.runs())

	b.ClearRange(8192, 8192)
	must.Eq(t, int64(4), b.Count())
}

func TestBitmapEncodeCoarsensToFit(t *testing.T) {
	t.Parallel()
	b := NewBitmap(1 << 30)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		b.SetRange(int64(r.IntN(1<<18))*4096, 4096)
	}
	enc := b.Encode(4096)
	must.LessEq(t, 4096, len(enc))
	c := NewBitmap(1 << 30)
	must.NoError(t, c.MergeEncoded(enc))
	// Every dirty block is still dirty: a superset, never a subset.
	for _, run := range b.runs() {
		for blk := run.Start; blk < run.Start+run.Len; blk++ {
			off, _, ok := c.NextRun(blk*4096, 4096)
			must.True(t, ok && off == blk*4096, must.Sprintf("block %d lost", blk))
		}
	}
}

func FuzzBitmapDecode(f *testing.F) {
	b := NewBitmap(1 << 24)
	b.SetRange(4096, 65536)
	f.Add(b.Encode(1024))
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, enc []byte) {
		c := NewBitmap(1 << 24)
		if err := c.MergeEncoded(enc); err != nil {
			return
		}
		d := NewBitmap(1 << 24)
		must.NoError(t, d.MergeEncoded(c.Encode(1<<16)))
		must.Eq(t, c.runs(), d.runs())
	})
}

// A persisted peer bitmap names its subject; version 3 (before the
// resync-target generation) reads with target generation 0, anything
// older or cut short is refused by name.
func TestPeerBitmapFormats(t *testing.T) {
	const size = 1 << 20
	b := NewBitmap(size)
	b.SetRange(8192, 4096)
	of := subject{inc: 7, gen: epochGenBase(2) + 3, target: epochGenBase(3) + 1}
	gotOf, got, err := decodePeerBitmap(encodePeerBitmap(of, b), size)
	must.NoError(t, err)
	must.Eq(t, of, gotOf)
	must.Eq(t, b.Count(), got.Count())

	v3 := binary.BigEndian.AppendUint64([]byte{3}, of.inc)
	v3 = binary.BigEndian.AppendUint64(v3, of.gen)
	v3 = append(v3, b.Encode(wire.MaxControlPayload-1024)...)
	gotOf, got, err = decodePeerBitmap(v3, size)
	must.NoError(t, err)
	must.Eq(t, subject{inc: of.inc, gen: of.gen}, gotOf)
	must.Eq(t, b.Count(), got.Count())

	for name, p := range map[string][]byte{
		"version 2": append([]byte{2}, v3[1:]...),
		"empty":     nil,
		"short v4":  encodePeerBitmap(of, b)[:20],
	} {
		_, _, err := decodePeerBitmap(p, size)
		must.ErrorIs(t, err, ErrInvalid, must.Sprint(name))
	}
}
