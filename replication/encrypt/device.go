package encrypt

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/saddlebag/saddlebag/replication"
)

// KeySize is the size of a Device's key: AES-256-XTS takes two AES-256
// keys.
const KeySize = 64

// blockSize is the unit of encryption (one XTS sector): the replication
// block, so that a block the engine tracks is a block encrypted whole.
const blockSize = replication.BlockSize

// Device serves a replication.Device's blocks decrypted: every blockSize
// (4 KiB) block is encrypted with AES-256-XTS, its tweak the block number
// (as dm-crypt's aes-xts-plain64 with 4096-byte sectors), before it is
// written to the Device underneath, and decrypted after it is read. The
// ciphertext is the same size as the plaintext, in the same place, so
// everything below (engine, replicas, resync, bitmaps, checksums) is
// unchanged and never sees plaintext.
//
// Requests of any alignment are served. A request that covers part of a
// block reads the whole block, decrypts it, changes the part and writes
// the whole block back encrypted (read-modify-write). Every request holds
// a lock on the blocks it touches for its whole duration (shared for
// reads, exclusive for writes and trims, granted in arrival order), so a
// read-modify-write never loses a concurrent write to another part of the
// same block, and a read never decrypts a block half written.
//
// Trimmed and never-written blocks: a replica returns zeros for them, and
// zeros are not the encryption of anything the file system wrote. So a
// block whose ciphertext is all zeros reads as plaintext zeros. A real
// ciphertext block is all zeros with probability 2^-32768, so this never
// turns written data into zeros. A TRIM is passed down as a TRIM for the
// whole blocks it covers (the replicas punch holes, which read as zeros,
// hence as plaintext zeros) and as an encrypted write of zeros for the
// parts of blocks at its ends. What replicas learn from this is which
// blocks were trimmed or never written, as with dm-crypt and discards.
//
// Device is safe for concurrent use. It implements
// replication.Device, and replication.HoldingDevice by asking the Device
// underneath.
type Device struct {
	dev   replication.Device
	c     *xtsCipher
	locks blockLocks
}

// NewDevice wraps dev, whose size must be a whole number of blocks, with
// AES-256-XTS under key (KeySize bytes). The key's bytes are not kept:
// the caller may clear them.
func NewDevice(dev replication.Device, key []byte) (*Device, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("%w: an encryption key is %d bytes, got %d", replication.ErrInvalid, KeySize, len(key))
	}
	if dev.Size()%blockSize != 0 {
		return nil, fmt.Errorf("%w: an encrypted device must be a whole number of %d-byte blocks, not %d bytes",
			replication.ErrInvalid, blockSize, dev.Size())
	}
	c, err := newXTS(key)
	if err != nil {
		return nil, fmt.Errorf("%w: encryption key refused by the cipher", replication.ErrInvalid)
	}
	return &Device{dev: dev, c: c}, nil
}

// Size implements replication.Device.
func (d *Device) Size() int64 { return d.dev.Size() }

// Flush implements replication.Device.
func (d *Device) Flush(ctx context.Context) error { return d.dev.Flush(ctx) }

// Holding implements replication.HoldingDevice.
func (d *Device) Holding() (bool, string) {
	if h, ok := d.dev.(replication.HoldingDevice); ok {
		return h.Holding()
	}
	return false, ""
}

func (d *Device) checkRange(off, n int64) error {
	size := d.dev.Size()
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("%w: [%d, %d) outside a device of %d bytes", replication.ErrOutOfRange, off, off+n, size)
	}
	return nil
}

// blocks returns the first and last block a non-empty range touches.
func blocks(off, n int64) (int64, int64) { return off / blockSize, (off + n - 1) / blockSize }

// ReadAt implements replication.Device.
func (d *Device) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return d.dev.ReadAt(ctx, p, off)
	}
	first, last := blocks(off, int64(len(p)))
	unlock, err := d.locks.lock(ctx, first, last, false)
	if err != nil {
		return err
	}
	defer unlock()
	if off%blockSize == 0 && len(p)%blockSize == 0 {
		if err := d.dev.ReadAt(ctx, p, off); err != nil {
			return err
		}
		d.decrypt(p, first)
		return nil
	}
	buf := getBuf(int(last-first+1) * blockSize)
	defer putBuf(buf)
	if err := d.dev.ReadAt(ctx, *buf, first*blockSize); err != nil {
		return err
	}
	d.decrypt(*buf, first)
	copy(p, (*buf)[off-first*blockSize:])
	return nil
}

// WriteAt implements replication.Device.
func (d *Device) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := d.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return d.dev.WriteAt(ctx, p, off, fua)
	}
	first, last := blocks(off, int64(len(p)))
	unlock, err := d.locks.lock(ctx, first, last, true)
	if err != nil {
		return err
	}
	defer unlock()
	buf := getBuf(int(last-first+1) * blockSize)
	defer putBuf(buf)
	b := *buf
	if err := d.readPartial(ctx, b, first, last, off, int64(len(p))); err != nil {
		return err
	}
	copy(b[off-first*blockSize:], p)
	d.encrypt(b, first)
	return d.dev.WriteAt(ctx, b, first*blockSize, fua)
}

// readPartial reads and decrypts, into b (blocks first..last), the blocks
// at either end that [off, off+n) covers only in part.
func (d *Device) readPartial(ctx context.Context, b []byte, first, last, off, n int64) error {
	headPartial := off%blockSize != 0 || (first == last && n < blockSize)
	tailPartial := (off+n)%blockSize != 0
	read := func(blk int64) error {
		at := b[(blk-first)*blockSize:][:blockSize]
		if err := d.dev.ReadAt(ctx, at, blk*blockSize); err != nil {
			return err
		}
		d.decrypt(at, blk)
		return nil
	}
	if headPartial {
		if err := read(first); err != nil {
			return err
		}
	}
	if tailPartial && (last != first || !headPartial) {
		return read(last)
	}
	return nil
}

// Trim implements replication.Device: whole blocks are trimmed below (they read as
// zeros), the parts of blocks at the ends are overwritten with encrypted
// zeros.
func (d *Device) Trim(ctx context.Context, off, n int64) error {
	if err := d.checkRange(off, n); err != nil {
		return err
	}
	if n == 0 {
		return d.dev.Trim(ctx, off, n)
	}
	first, last := blocks(off, n)
	unlock, err := d.locks.lock(ctx, first, last, true)
	if err != nil {
		return err
	}
	defer unlock()
	zeroPart := func(blk int64) error {
		buf := getBuf(blockSize)
		defer putBuf(buf)
		b := *buf
		if err := d.dev.ReadAt(ctx, b, blk*blockSize); err != nil {
			return err
		}
		d.decrypt(b, blk)
		start, end := max(off, blk*blockSize), min(off+n, (blk+1)*blockSize)
		clear(b[start-blk*blockSize : end-blk*blockSize])
		d.encrypt(b, blk)
		return d.dev.WriteAt(ctx, b, blk*blockSize, false)
	}
	whole0 := (off + blockSize - 1) / blockSize // first whole block
	whole1 := (off + n) / blockSize             // one past the last whole block
	if off%blockSize != 0 {
		if err := zeroPart(first); err != nil {
			return err
		}
	}
	if (off+n)%blockSize != 0 && (last != first || off%blockSize == 0) {
		if err := zeroPart(last); err != nil {
			return err
		}
	}
	if whole0 < whole1 {
		return d.dev.Trim(ctx, whole0*blockSize, (whole1-whole0)*blockSize)
	}
	return nil
}

var zeroBlock [blockSize]byte

// decrypt decrypts whole blocks in place, b starting at block blk; an
// all-zero block (trimmed or never written) stays plaintext zeros.
func (d *Device) decrypt(b []byte, blk int64) {
	for i := 0; i < len(b); i, blk = i+blockSize, blk+1 {
		blkb := b[i : i+blockSize]
		if bytes.Equal(blkb, zeroBlock[:]) {
			continue
		}
		d.c.decryptSector(blkb, uint64(blk))
	}
}

// encrypt encrypts whole blocks in place, b starting at block blk.
func (d *Device) encrypt(b []byte, blk int64) {
	for i := 0; i < len(b); i, blk = i+blockSize, blk+1 {
		d.c.encryptSector(b[i:i+blockSize], uint64(blk))
	}
}

// Buffers up to encPoolSize are pooled (a FUSE or NBD request is at most
// a few MiB); larger ones are allocated.
const encPoolSize = 1<<20 + 2*blockSize

var encPool = sync.Pool{New: func() any {
	b := make([]byte, encPoolSize)
	return &b
}}

func getBuf(n int) *[]byte {
	if n > encPoolSize {
		b := make([]byte, n)
		return &b
	}
	b := encPool.Get().(*[]byte)
	*b = (*b)[:n]
	return b
}

func putBuf(b *[]byte) {
	if cap(*b) == encPoolSize {
		*b = (*b)[:encPoolSize]
		encPool.Put(b)
	}
}

// blockLocks are shared/exclusive locks on ranges of blocks, granted in
// arrival order: a request waits for every earlier request (held or still
// waiting) whose range overlaps its own unless both are shared, so a
// stream of reads cannot starve a write.
type blockLocks struct {
	mu    sync.Mutex
	queue []*blockLock // in arrival order
}

type blockLock struct {
	first, last int64
	excl        bool
	done        chan struct{} // closed on release
}

func (a *blockLock) conflicts(b *blockLock) bool {
	return (a.excl || b.excl) && a.first <= b.last && b.first <= a.last
}

// lock takes blocks first..last and returns the function that releases
// them; it gives up when ctx ends.
func (l *blockLocks) lock(ctx context.Context, first, last int64, excl bool) (func(), error) {
	me := &blockLock{first: first, last: last, excl: excl, done: make(chan struct{})}
	l.mu.Lock()
	l.queue = append(l.queue, me)
	l.mu.Unlock()
	for {
		var wait chan struct{}
		l.mu.Lock()
		for _, o := range l.queue {
			if o == me {
				break
			}
			if o.conflicts(me) {
				wait = o.done
				break
			}
		}
		l.mu.Unlock()
		if wait == nil {
			return func() { l.release(me) }, nil
		}
		select {
		case <-wait:
		case <-ctx.Done():
			l.release(me)
			return nil, fmt.Errorf("waiting for blocks %d-%d: %w", first, last, ctx.Err())
		}
	}
}

func (l *blockLocks) release(me *blockLock) {
	l.mu.Lock()
	for i, o := range l.queue {
		if o == me {
			l.queue = append(l.queue[:i], l.queue[i+1:]...)
			break
		}
	}
	l.mu.Unlock()
	close(me.done)
}

var (
	_ replication.Device        = (*Device)(nil)
	_ replication.HoldingDevice = (*Device)(nil)
)
