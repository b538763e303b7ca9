// Package nbd is the NBD (Network Block Device) frontend: it serves one
// replication.Device over the NBD protocol
// (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md),
// for `saddlebag engine`.
//
// Scope, on purpose small:
//   - fixed newstyle negotiation only, with NBD_FLAG_NO_ZEROES
//     (negotiate.go);
//   - options EXPORT_NAME, ABORT, LIST, INFO and GO; every other option
//     (STARTTLS, STRUCTURED_REPLY, meta contexts, extended headers, unknown)
//     gets an NBD_REP_ERR_* reply so that real clients fall back;
//   - simple replies only; commands READ, WRITE, DISC, FLUSH, TRIM and
//     WRITE_ZEROES (transmit.go).
//
// Requests on one connection run concurrently: the connection's read loop
// decodes each request (reading a WRITE's payload straight into a pooled
// buffer) and hands it to its own goroutine; replies are written under a
// mutex, a READ's header and data together in one vectored write. No
// request outside the export reaches the Device; a Device error becomes
// the errno the protocol mandates (ErrFenced: ESHUTDOWN, so that the
// client disconnects and finds the new primary).
//
// It sees the engine only through the replication.Device interface and
// the errors replication defines. It imports replication and
// internal/backoff of Saddlebag's packages, and none of the other
// frontends (replication/frontend/fuse) or replication/encrypt: a caller
// composes those. replication must not import it.
package nbd
