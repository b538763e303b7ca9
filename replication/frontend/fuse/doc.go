// Package fuse is the FUSE frontend: it serves one replication.Device as
// one regular file in a FUSE mount, so that a loop device (losetup
// --direct-io=on) can turn it into a block device on hosts without the
// nbd module. docs/architecture.md, "Data path".
//
// The file system is two inodes, the root directory and the volume file,
// served through go-fuse's raw API (fs.go; imported as gofuse, since this
// package is named fuse too): a one-file tree needs no inode bookkeeping,
// and the raw API hands every request straight to the Device without the
// fs package's per-node locks.
//
// Settings, as measured (docs/architecture.md, "FUSE settings"): the
// mount is made directly by this process (DirectMountStrict, no
// fusermount), requests carry up to 1 MiB (MaxWrite), up to 64
// asynchronous requests are in flight (MaxBackground), CAP_ASYNC_DIO lets
// the loop device keep several direct I/O requests in flight, and the
// file is opened with FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES so
// that no page cache sits between the loop device and the replicas and
// writes are not serialised on the inode lock.
//
// Durability: a FLUSH or FUA bio from the file system on the loop device
// becomes a vfs_fsync of this file in the loop driver, which the kernel
// sends here as FSYNC; FSYNC (and FLUSH, sent on every close) call
// Device.Flush, which returns only when every in-sync replica has fsynced.
// Writes are sent with fua=false: the kernel asks for durability with FSYNC.
//
// Contract: New mounts and serves; a Mount is torn down with Unmount or
// Close (detach the loop device first). A watchdog (watchdog.go) aborts
// the connection when requests stop completing while the Device is not
// deliberately holding them: a replication.HoldingDevice may hold for as
// long as it takes. NewHandoff serves the same file system through a
// relay (relay.go) so that the connection can be handed to another
// process (HandOver, Conn) and taken over there (Adopt) without the loop
// device or the file system above noticing (issue 13). plugin/mount
// formats and mounts what is on top.
//
// It sees the engine only through replication.Device and
// replication.HoldingDevice and the errors replication defines. It
// imports replication alone of Saddlebag's packages, and neither the NBD
// frontend (replication/frontend/nbd) nor replication/encrypt: a caller
// composes those. replication must not import it.
package fuse
