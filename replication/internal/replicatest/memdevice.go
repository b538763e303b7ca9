package replicatest

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/saddlebag/saddlebag/replication"
)

// MemDevice is an in-memory replication.Device that records how it was
// called. Set Hook and HookCalled before the device is in use.
type MemDevice struct {
	// Hook, when set, runs on every call inside the device, after it is
	// counted; its error is the call's.
	Hook func(ctx context.Context, op string) error
	// HookCalled, when set, receives the op ("read", "write", "flush",
	// "trim") of every call that runs Hook, before Hook runs.
	HookCalled chan string

	mu    sync.Mutex
	data  []byte
	stats MemStats
}

// MemStats counts MemDevice calls.
type MemStats struct {
	Reads, Writes, FUAWrites, Flushes, Trims int
	OutOfRange                               int // calls outside the device: a frontend must never make them
}

// NewMemDevice returns a device holding data (not copied), of
// len(data) bytes.
func NewMemDevice(data []byte) *MemDevice { return &MemDevice{data: data} }

// Size implements replication.Device.
func (d *MemDevice) Size() int64 { return int64(len(d.data)) }

// Stats returns the calls counted so far.
func (d *MemDevice) Stats() MemStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// Contents returns a copy of the device's bytes.
func (d *MemDevice) Contents() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Clone(d.data)
}

// enter counts a call, checks its range and runs the hook.
func (d *MemDevice) enter(ctx context.Context, op string, off, n int64) error {
	d.mu.Lock()
	inRange := off >= 0 && n >= 0 && off <= int64(len(d.data)) && n <= int64(len(d.data))-off
	if !inRange {
		d.stats.OutOfRange++
	}
	d.mu.Unlock()
	if !inRange {
		return fmt.Errorf("mem device %s at %d+%d: %w", op, off, n, replication.ErrOutOfRange)
	}
	if d.Hook != nil {
		if d.HookCalled != nil {
			d.HookCalled <- op
		}
		return d.Hook(ctx, op)
	}
	return nil
}

// ReadAt implements replication.Device.
func (d *MemDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.mu.Lock()
	d.stats.Reads++
	d.mu.Unlock()
	if err := d.enter(ctx, "read", off, int64(len(p))); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(p, d.data[off:])
	return nil
}

// WriteAt implements replication.Device.
func (d *MemDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	d.mu.Lock()
	d.stats.Writes++
	if fua {
		d.stats.FUAWrites++
	}
	d.mu.Unlock()
	if err := d.enter(ctx, "write", off, int64(len(p))); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.data[off:], p)
	return nil
}

// Flush implements replication.Device.
func (d *MemDevice) Flush(ctx context.Context) error {
	d.mu.Lock()
	d.stats.Flushes++
	d.mu.Unlock()
	return d.enter(ctx, "flush", 0, 0)
}

// Trim implements replication.Device.
func (d *MemDevice) Trim(ctx context.Context, off, length int64) error {
	d.mu.Lock()
	d.stats.Trims++
	d.mu.Unlock()
	if err := d.enter(ctx, "trim", off, length); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.data[off : off+length])
	return nil
}

var _ replication.Device = (*MemDevice)(nil)
