package mount

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// memDevice is an in-memory replication.Device for unit tests of the
// mount steps over a FUSE file; block, when set, makes reads and writes
// wait until it is closed (a hung engine).
type memDevice struct {
	mu    sync.RWMutex
	data  []byte
	block atomic.Pointer[chan struct{}]
}

func newMemDevice(size int) *memDevice { return &memDevice{data: make([]byte, size)} }

func (d *memDevice) wait() {
	if ch := d.block.Load(); ch != nil {
		<-*ch
	}
}

func (d *memDevice) Size() int64 { return int64(len(d.data)) }

func (d *memDevice) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > int64(len(d.data)) {
		return fmt.Errorf("out of range: %d+%d", off, n)
	}
	return nil
}

func (d *memDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	d.wait()
	if err := d.check(off, int64(len(p))); err != nil {
		return err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	copy(p, d.data[off:])
	return nil
}

func (d *memDevice) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	d.wait()
	if err := d.check(off, int64(len(p))); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.data[off:], p)
	return nil
}

func (d *memDevice) Flush(context.Context) error { d.wait(); return nil }

func (d *memDevice) Trim(_ context.Context, off, n int64) error {
	d.wait()
	if err := d.check(off, n); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.data[off : off+n])
	return nil
}
