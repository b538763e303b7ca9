// Package sim is the crash-and-fault simulator of the data plane (issue
// #10), in the spirit of Jepsen, FoundationDB's simulation and
// CrashMonkey/ALICE: many randomized schedules, each named by a seed, each
// replayable, checked against a model of what the device promised.
//
// # One schedule
//
// Three replica servers (the real replication/replica.Server and Store, in
// process, on loopback ports) each keep their files on a crashfs.FS
// (replication/sim/crashfs), an in-memory replication/replica.FileSystem (the
// Store's seam, OpenStoreWith) that remembers every block written or
// punched since each file's last sync. Each replica is reached only
// through a fault proxy (replication/internal/faultproxy) whose address
// names it (in engine configs and in the in-sync record), so it can
// restart on a new port. A coordinator stands in for Consul with the semantics of
// leader/lease.go and leader/insync.go: the primary lock's index is the
// epoch, the in-sync record is written only by the lock holder and never
// over a newer epoch's record; the epoch is the lock index plus an epoch
// floor, as in leader. Promotion (simulation.promote, one function,
// following internal/primary.Promote) takes the lock, reads the record
// (with its generation; none when lost) and starts a replication.Engine
// with it as EngineConfig.Recorded; when the replicas refuse the epoch
// (the lock index was reset) it raises the floor above their promise and
// starts again, as leader.Lease.RaiseEpoch does. The hook fences the
// engine (ErrFenced) when the lease is lost or a newer record exists, and
// fails (the engine retries, holding writes) during a blip. A simulated
// power loss restarts the replica with a new boot id, as a real host
// would come back.
//
// Writers (three, on disjoint block ranges, each issuing one op at a time,
// so per block the ops are totally ordered) issue writes of 1-8 blocks,
// FUA writes, small trims, trims of half or all of their range (several
// activity-log extents) and flushes. Every block written carries a header
// naming (block, writer, op) and a fill derived from it, so a read-back
// identifies the exact version, or content that no write put there.
//
// Meanwhile the scheduler draws, from the seed, a list of steps, each a
// pause and one fault, at random points (so also while a resync runs, a
// bitmap is persisted or a promotion has just happened):
//
//	kill            SIGKILL a replica (its open handles die; the page cache
//	                survives), or restart it if down
//	powerloss       kill, and revert each file to its synced content plus a
//	                random subset of the later block writes, in order
//	wipe            kill, delete the replica's directory, restart it empty
//	partition       cut a replica off from every primary, or heal the cut
//	delay           give each new connection to a replica its own latency
//	                (so frames of different connections reorder), or stop
//	hold            stop forwarding a replica's frames for up to 1.5x the
//	                replica timeout, then deliver them
//	diskfull        make a replica's disk full (ENOSPC on new blocks), or not
//	primarycrash    close the primary without a flush, promote another
//	secondprimary   promote a new primary while the old one runs on, some
//	                writers staying with the old one until it reports fenced
//	recordlost      delete the in-sync record
//	recordrollback  put back an older version of the in-sync record
//	lockreset       set the lock index back (epochs repeat)
//	consulblip      in-sync record writes fail for a while
//	wipefailover    crash the primary, wipe a replica the record still
//	                names, restart it empty, promote a new primary
//	promotionfault  crash the primary, and kill or power-cut a replica
//	                while the next one is being promoted
//	resyncpowerloss power-cut a replica while it is being resynced
//	                (killing and restarting one first if none is)
//	persistcrash    arm a power cut of a replica right after one of its
//	                next writes to a persisted peer bitmap or to its
//	                metadata (epoch, activity log), before the fsync
//	alldown         (a permission) let the replica faults impair every
//	                replica at once; without it one always stays healthy
//
// A wipe never destroys the only replica left holding the newest
// generation (the running primary's in-sync set, else the newest record):
// that is a second failure on top of the one that left it alone, and the
// product then rightly refuses to serve the volume.
//
// Then every fault is healed, the primary is kept or (half the time, and
// always if it is fenced) crashed and a new one promoted (retrying, each
// attempt a new epoch, as a node agent would), every replica must come
// back in sync within recoveryWait, a flush is issued, and the checks run.
//
// # Checks
//
//   - acked_writes_lost: blocks that read back, on any in-sync replica, a
//     version older than the newest one that must have survived, or
//     content no write put there. Without a power loss in the schedule
//     that is the newest acknowledged op on the block; after a power loss,
//     the newest op acknowledged before the issue of the newest completed
//     flush, or FUA. Any version from there on (acknowledged or not, as an
//     unacknowledged op may have been applied) is allowed; a zero block is
//     allowed if one of them is a trim.
//   - divergent_replicas: in-sync replicas whose data file differs from the
//     first in-sync replica's.
//   - fenced_writes_accepted: writes and trims a primary acknowledged
//     although they were issued after a later primary had returned from
//     StartEngine: its promise must fence the old one by then. (Writes in
//     flight at the promise may go either way, so they are not counted.)
//   - blip_write_errors: writes and trims that failed only because the
//     in-sync record could not be written during a Consul blip: a blip
//     must hold I/O until the record is written, not fail it.
//   - rollback_undetectable_schedules: a promotion over an in-sync record
//     rolled back to an older generation while every replica holding the
//     newest one was unreachable cannot tell that record from a current
//     one (replication/history.go); such schedules are counted, with the
//     blocks that read older versions, apart from acked_writes_lost. So
//     are the writes an older primary acknowledged after only such
//     primaries promised: they could reach none of its replicas to fence
//     it (the README says what operators restoring Consul do). Replicas
//     left different are divergent_replicas there too: stale data must
//     still be the same on every in-sync replica.
//   - liveness: recovery must promote a primary and bring every replica
//     back in sync; no engine call may panic or stay blocked past
//     opDeadline (the engine is then reported, abandoned without Close,
//     as it may hold its locks, and the schedule goes on with a new
//     primary).
//
// # Determinism
//
// A seed fixes the fault steps and their parameters, the writers' op
// sequences and the power-loss draws; it does not fix goroutine
// interleavings, network timing or where in the workload a fault lands.
// So a replay repeats the same fault schedule, and usually, not always,
// the same failure: replay with REPEAT=n.
//
// # Simplifications
//
// By default replicas run in process: a "SIGKILL" invalidates the
// replica's file handles at once (nothing it does afterwards persists)
// and stops its server, which is what a kill does to the data. With
// Config.Processes (PROCESSES=1, and TestTortureProcesses) each replica
// is this test binary re-executed as a replica server on real files, on
// a small tmpfs of its own when running as root: a kill is a real
// SIGKILL, disk full a real full tmpfs (a remount to just above what is
// used), a wipe a real rm -r; power loss needs crashfs and degrades to a
// kill there. crashfs keeps the namespace (create, remove, truncate)
// durable at once, as if each change were followed by a directory sync
// (which the Store does).
//
// Primaries are engines in this process. A primary crash marks its
// in-sync hook dead first (a dead process records nothing, while closing
// an in-process engine fails its in-flight writes), then closes it, then
// frees its lock (session expiry). A second primary leaves the old one
// running with no lease at all: only the data plane's epochs fence it,
// which is the point of that fault.
//
// # Running
//
// TestTorture runs schedules: a minute by default (make test), reporting
// failures without failing the test (the current data plane is known to
// fail; see issue #10) unless -strict; make torture runs it for DURATION
// (default 10m), or SEEDS schedules, or replays SEED; FAULTS picks the
// fault classes. See the flags in torture_test.go.
//
// # Layout
//
// sim.go holds Config, Result and Run; schedule.go the steps drawn from
// the seed and their injection; faults.go the fault classes; primary.go
// promotion, primary crashes and the judgement of undetectable
// rollbacks; coord.go the Consul stand-in; node.go the replica servers
// (in process or as processes); model.go the writers and the block
// versions they write; check.go recovery and the checks; report.go the
// schedule's trace and the descriptions of what a check found. Two
// seams are packages of their own: replication/sim/crashfs, the
// crash-recording file system, and replication/internal/faultproxy, the
// fault proxy, which package replication's own tests use too (so it
// imports none of Saddlebag's packages).
//
// Of Saddlebag's packages it imports only replication (the engine),
// replication/replica (the replica servers), replication/wire,
// replication/internal/faultproxy and replication/sim/crashfs; nothing
// imports it (its tests run it).
package sim
