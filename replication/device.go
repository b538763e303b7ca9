package replication

import "context"

// Device is a block device as a frontend (replication/frontend/nbd,
// replication/frontend/fuse) sees it: the primary engine implements it, and
// so does replication/encrypt's wrapper of it.
//
// Contract: every method may be called concurrently from many goroutines.
// WriteAt returns only when every in-sync replica holds the data; with fua it
// is also durable on each of them. Flush returns only when every write that
// completed before Flush was called is durable on every in-sync replica.
// Offsets and lengths are in bytes and must lie inside [0, Size()); a request
// outside the device returns an error wrapping ErrOutOfRange and changes
// nothing. An engine that has been fenced by a newer primary returns errors
// wrapping ErrFenced from every method and completes no further I/O.
type Device interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	Flush(ctx context.Context) error
	Trim(ctx context.Context, off, length int64) error
}

// HoldingDevice is implemented by a Device that may deliberately hold
// requests for a long time (the Engine, while the primary lease is
// unconfirmed or below min_in_sync). Holding reports whether it is doing so
// now, and why; a frontend's watchdog does not treat requests waiting then
// as a hung device. Holding must not block (it is asked about a device that
// may be hung) and may be called concurrently with anything.
type HoldingDevice interface {
	Holding() (held bool, reason string)
}
