package replication

import "context"

// Device is a block device as a frontend (NBD, FUSE) sees it: the primary
// engine implements it.
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
