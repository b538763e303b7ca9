package replication

import (
	"math/rand/v2"
	"testing"

	"github.com/shoenig/test/must"
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
