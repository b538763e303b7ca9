// Package replication is Saddlebag's data plane: it turns replica stores on
// several nodes into one block device whose every acknowledged write is on
// every in-sync replica (DRBD protocol C semantics, in user space).
//
// It is the primary side. What both sides agree on, the wire protocol
// (versioned, framed, checksummed, bounded frames that carry the sender's
// epoch and a request id, their statuses and payloads), is
// replication/wire; what runs on every node, the replica store and the
// replica server that applies a connection's frames in arrival order and
// refuses stale, foreign and implausible epochs, is replication/replica.
// This package imports both and neither imports it.
//
// It owns:
//
//   - the volume's history (history.go): which replicas a new primary may
//     trust, decided from the recorded in-sync set and the membership the
//     replicas carry themselves, so that a wiped replica, a lost or
//     rolled-back record never makes a stale copy current; membership
//     generations are never reused and carry the writing primary's epoch
//     in their high 32 bits (epochGenBase), so a newer primary's sets
//     outrank an older one's;
//   - the primary engine (engine.go; started and stopped in
//     engine_start.go, its Device methods in engine_io.go; client.go is
//     its pipelined connection to one replica): fans writes out to every
//     in-sync replica and completes them when all have them
//     (engine_write.go); FLUSH and FUA become an fsync on each; failed
//     replicas are dropped (the activity log's extents marked in their
//     bitmaps, since they may have lost what they had not flushed) and
//     every in-sync change is written to the members and then through an
//     InSyncHook before a write depending on it completes (retried,
//     holding I/O, while the hook fails; engine_insync.go); the last
//     in-sync replica is never dropped; a stale-epoch reply fences the
//     engine for good; Hold/Release/Fence let the lease layer stop I/O
//     completing; Holding reports whether requests wait on purpose (lease
//     hold, min_in_sync, in-sync set being recorded), so a frontend can
//     tell a holding engine from a hung one (engine_hold.go);
//     AddReplica/RetireReplica change the replica set of a running engine
//     (membership.go);
//   - recovery: per-replica dirty bitmaps (bitmap.go), persisted on the
//     in-sync replicas and used to resync a returning replica; checksum
//     and full resync while writes keep flowing (resync.go, its copy
//     passes in resync_copy.go; in-sync replicas whose connection broke
//     are reconnected by resync_reconnect.go); the activity log of hot
//     extents (activity.go), which lets a new primary reconcile only
//     those after a crash (recover.go); min_in_sync; and the status
//     operators read (status.go);
//   - replica administration for the control plane (admin.go): create a
//     new volume's replica on a node and delete it, without promising an
//     epoch, over the engine's client;
//   - the transport's dialling side (transport.go): a Dialer for every
//     connection a primary or the control plane makes (mutual TLS in
//     production, wired by cmd/saddlebag; nil is plain TCP); the server's
//     side is replication/replica's Guard. Probe (probe.go) sends a
//     hostile peer's requests, for drills and the acceptance test;
//   - the seam to the frontends (device.go): Device, the block device the
//     engine is to a frontend, and HoldingDevice, which tells a
//     frontend's watchdog a deliberate hold from a hung engine.
//
// For metrics (metrics.go), the engine counts I/O by op (requests, bytes,
// errors, latency buckets) with atomics on its I/O path, and holds,
// fencings and replica drops; Metrics reads them with the replica counts
// and resync figures without waiting on the in-sync recording, and
// RunningEngines lists the engines of the process.
//
// The packages under it build on that seam, and replication knows nothing
// of them: the frontends that serve a Device, replication/frontend/nbd and
// replication/frontend/fuse (the volume as one file for a loop device),
// and replication/encrypt, the Device wrapper that encrypts every block
// before the engine sees it. A caller (plugin, cmd/saddlebag) composes
// them: engine, then encryption, then a frontend. Their tests share
// in-process replicas and engines from replication/internal/replicatest.
//
// BlockSize, ErrOutOfRange, ErrNoSpace and ErrInvalid are
// replication/wire's, re-exported as part of the Device contract: a
// frontend matches them whichever side refused the request.
//
// It knows nothing of Consul, CSI or Nomad: it is handed epochs, replica
// addresses and an InSyncHook. It must not import plugin, leader, scheduler
// or hcl, nor the packages built on it (replication/frontend,
// replication/encrypt).
package replication
