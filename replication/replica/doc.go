// Package replica is what runs on every node for the volumes it holds a
// replica of: the replica store and the replica server.
//
// It owns:
//
//   - the store (store.go, meta.go): per volume a sparse data file and a
//     two-slot checksummed metadata file (Meta) holding the highest
//     promised epoch and its owner, the data generation, the
//     clean-shutdown flag, the replica's incarnation, the in-sync
//     membership (set and generation) it was last made a member of, and
//     the generation of the primary that last made it a resync target.
//     Every operation carries its sender's epoch and is refused below the
//     promised one (and at the promised one from another owner), and any
//     promise, explicit or implicit, more than wire.MaxEpochJump above it;
//   - what recovery needs of a replica (store_sync.go): the activity log,
//     the peer bitmaps a primary persists on it (slot files like the
//     metadata), block checksums and the map of allocated ranges;
//   - the FileSystem seam (fsfile.go) through which a store opens its
//     files: the real one (OSFS) unless a test's, such as the simulator's
//     crash-recording one (replication/sim/crashfs);
//   - the server (server.go) that serves a store's replicas over the wire
//     protocol: each connection is bound to one volume and its frames are
//     applied strictly in arrival order; a request of a connection whose
//     primary has since promised on a newer one is refused
//     (wire.ErrSuperseded). A Guard (guard.go) admits every connection
//     before any frame is read (mutual TLS and Consul intentions in
//     production, wired by cmd/saddlebag); a peer it denies has its first
//     request answered wire.StatusDenied, and nothing it sends is applied.
//
// ReadMeta, ReadMetaOn and MarkUnclean read (and, for drills, mark
// unclean) a replica's metadata without a server, for operators and
// tests.
//
// It knows nothing of primaries beyond the wire protocol: it imports,
// of Saddlebag's packages, only replication/wire. It must not import
// the engine (replication), the frontends, replication/sim, or anything
// above them.
package replica
