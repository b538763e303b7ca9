package replication

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// InSyncHook records the set of replicas that hold every acknowledged write.
// The engine calls it whenever that set shrinks or grows, and completes no
// write that depends on the change until it has returned nil: after a
// replica is dropped, a new primary must never mistake it for a current one.
//
// Each set has a generation, one more than the previous set's (see
// history.go); the members have recorded it before the hook is called.
//
// Contract: calls are serialised (never concurrent) and each carries the
// whole set. An error leaves the change unrecorded and the engine retries
// it, holding the writes that depend on it, until it succeeds; an error
// wrapping ErrFenced (the caller's lease is gone) fences the engine.
type InSyncHook interface {
	SetInSync(ctx context.Context, epoch, gen uint64, inSync []string) error
}

// LogHook is the InSyncHook of a standalone engine: it only logs. The node
// agent uses a Consul-backed hook instead.
type LogHook struct{ Log hclog.Logger }

// SetInSync logs the new set.
func (h LogHook) SetInSync(_ context.Context, epoch, gen uint64, inSync []string) error {
	h.Log.Info("in-sync set changed", "epoch", epoch, "generation", gen, "in_sync", inSync)
	return nil
}

// ReplicaState is the engine's view of one replica.
type ReplicaState string

const (
	// StateInSync replicas receive every write and may serve reads.
	StateInSync ReplicaState = "in-sync"
	// StateResyncing replicas receive every write while resync copies what
	// they miss; they rejoin the in-sync set when it is done.
	StateResyncing ReplicaState = "resyncing"
	// StateOutOfSync replicas miss writes (new, stale or of unknown
	// history) and wait for resync.
	StateOutOfSync ReplicaState = "out-of-sync"
	// StateDropped replicas failed (error, timeout, crash) and were removed
	// from the in-sync set; the engine reconnects and resyncs them.
	StateDropped ReplicaState = "dropped"
	// StateUnavailable replicas could not be reached at start.
	StateUnavailable ReplicaState = "unavailable"
)

// ReplicaConfig names one replica of the volume.
type ReplicaConfig struct {
	// Addr is the replica server's host:port; it also names the replica.
	Addr string
	// Local marks the replica on this node: reads prefer it.
	Local bool
}

// EngineConfig configures a primary engine.
type EngineConfig struct {
	Volume   string
	Size     int64
	Epoch    uint64
	Replicas []ReplicaConfig
	// Recorded is the in-sync set the coordination layer recorded last
	// (Consul), nil when it has none. It is checked against the history
	// the replicas carry themselves (history.go): only replicas of the
	// newest generation start in sync; the others are resynced.
	Recorded *wire.Membership
	// MinInSync is the fewest in-sync replicas a write may complete with;
	// below it writes wait for resync to bring replicas back. Default 1.
	MinInSync int
	// Timeout bounds each replica request; a replica that misses it is
	// dropped. Default 5s.
	Timeout time.Duration
	// ResyncRate limits resync traffic to this many bytes per second per
	// replica; 0 means unlimited.
	ResyncRate int64
	// ReconnectInterval is how often dropped replicas are retried.
	// Default 1s.
	ReconnectInterval time.Duration
	// ProgressInterval is how often resync progress is logged. Default 5s.
	ProgressInterval time.Duration
	// ActivityExtents is the activity log's size in extents (ExtentSize
	// each), 2 to 512. Default 128.
	ActivityExtents int
	// Want is the replica count the volume's spec asks for, reported in
	// Metrics only. Default: len(Replicas).
	Want int
	// Hook records in-sync set changes. Default: LogHook.
	Hook InSyncHook
	// Dial connects to replica servers (mutual TLS in production, see
	// transport.go). nil: plain TCP.
	Dial Dialer
	Log  hclog.Logger
}

// Engine is a volume's primary: it replicates every write synchronously to
// all in-sync replicas (DRBD protocol C) and serves the volume as a Device.
//
// Writes reach every replica in one global order: submission to all
// replicas happens under one lock and each replica applies its requests in
// arrival order, so overlapping concurrent writes leave identical replicas.
type Engine struct {
	cfg   EngineConfig
	log   hclog.Logger
	peers []*peer

	// order serialises submissions to replicas; orderCond wakes writes
	// waiting for a resync lock on their range.
	order     sync.Mutex
	orderCond *sync.Cond
	targets   *targetSet    // guarded by order
	locks     []byteRange   // ranges resync is copying; guarded by order
	changed   chan struct{} // closed and replaced when targets change; guarded by order

	// stateMu serialises peer state changes and hook calls.
	stateMu  sync.Mutex
	recorded atomic.Uint64 // version of the newest in-sync set the hook recorded
	gen      uint64        // generation of the newest set the members recorded; guarded by stateMu
	genSet   uint64        // targets version that gen describes; guarded by stateMu
	// genTried is the highest generation ever sent to a member (>= gen): an
	// attempt that failed on some member may still have reached others,
	// so its number is never given to another set; guarded by stateMu.
	genTried uint64
	holding  atomic.Int32 // requests waiting for a retry of the in-sync record or a reconnect
	written  bool         // an in-sync replica held data at start (Written)
	owner    uint64       // names this engine's promises (replica.Volume.PromiseOwned)
	// lostSeq counts the times the last in-sync replica came back from a
	// power loss (writes acknowledged since the last flush are gone);
	// lostSeen is the count the last Flush reported (errseq-like).
	lostSeq, lostSeen atomic.Uint64

	al     activityLog
	bmMu   sync.Mutex // serialises bitmap persistence
	stats  engineStats
	io     [numOps]ioCounter // per-op I/O counters (metrics.go)
	fenced atomic.Bool

	readNext atomic.Uint32
	holdMu   sync.Mutex
	hold     atomic.Pointer[chan struct{}]
	holds    holdCounters // requests deliberately held (engine_hold.go)

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// peer is one replica. Fields other than cfg are guarded by Engine.stateMu.
type peer struct {
	cfg     ReplicaConfig
	client  *replicaClient
	state   ReplicaState
	reason  string
	open    wire.OpenReply
	created bool // known to be a new, empty replica: resync copies everything
	// dirty holds the blocks the replica misses while it is behind; nil
	// while in sync, or when its history is unknown (checksum resync).
	dirty *Bitmap
	// dirtyOf is the replica dirty describes. A replica reporting another
	// in-sync or resync-target generation has been written since by a
	// primary that did not keep this bitmap, or while a holder of it was
	// away: dirty no longer says what it differs in (simulator seed
	// 678034). Its incarnation is 0 when it is the one connected.
	dirtyOf subject
	// unflushed are the activity log's extents when the replica failed:
	// lost if its host (boot id unflushedBoot then) lost power.
	unflushed     map[uint64]bool
	unflushedBoot string
	missed        uint64 // writes known missed while not in sync (a resync that began before must not rejoin)
	// uncertain are the ranges of requests abandoned while every in-sync
	// connection was broken: they may have reached some in-sync replicas
	// and not others. Set on the in-sync replicas they were sent to; the
	// first of them back is the volume's copy, the others get these
	// ranges from it (reconnectInSync).
	uncertain *Bitmap
	persisted uint64 // dirty.Changes() when last persisted; ^0 forces
	resync    *resyncProgress
	busy      bool      // a resync goroutine owns the peer
	failures  int       // resync attempts failed in a row
	retryAt   time.Time // no resync attempt before this
}

// subject names the state of a replica a bitmap describes: its
// incarnation, its in-sync generation and its resync-target generation
// (see Meta), as when the bitmap was started.
type subject struct{ inc, gen, target uint64 }

// subjectOf is the subject a replica's open or promise reply reports.
func subjectOf(o wire.OpenReply) subject {
	return subject{inc: o.Incarnation, gen: o.Membership.Gen, target: o.TargetGen}
}

// holdsNothing reports whether the replica that replied o holds no data
// and no history: just created, or never written by a primary nor made a
// member of an in-sync set. Resync gives it a full copy of what is
// allocated.
func holdsNothing(o wire.OpenReply) bool {
	return o.Created || (o.Generation == 0 && o.Membership.Gen == 0)
}

// startBitmap starts an empty bitmap of what p misses from now on, for
// the replica it is connected to (as it last reported or acknowledged
// its state).
func (p *peer) startBitmap(size int64) {
	p.dirty, p.dirtyOf, p.persisted = NewBitmap(size), subjectOf(p.open), ^uint64(0)
}

// takeUncertain moves the peer's uncertain ranges into its bitmap (not
// nil): it is behind now, and gets them from the copy with the rest.
func (p *peer) takeUncertain() {
	if p.uncertain != nil {
		p.dirty.Merge(p.uncertain)
		p.uncertain = nil
	}
}

// target pairs a peer with the client a snapshot sends to.
type target struct {
	p *peer
	c *replicaClient
}

// targetSet is an immutable snapshot of where writes go.
type targetSet struct {
	version   uint64   // bumped when the in-sync membership changes
	inSync    []target // must apply every request for it to complete
	resyncing []target // receive writes; a failure aborts their resync
	// behind are the bitmaps of replicas not receiving writes, which
	// record them instead: the bitmaps themselves, as of the snapshot, so
	// a write never reads a peer's fields outside stateMu.
	behind []*Bitmap
}

type byteRange struct{ off, n int64 }

func (r byteRange) overlaps(off, n int64) bool { return off < r.off+r.n && r.off < off+n }

type engineStats struct {
	reconcileExtents atomic.Int64
	reconcileBytes   atomic.Int64
	reconcileBlocks  atomic.Int64
	holds            atomic.Uint64 // Hold calls that began a hold
	drops            atomic.Uint64 // in-sync replicas dropped
}

// Size returns the volume size in bytes.
func (e *Engine) Size() int64 { return e.cfg.Size }

// Epoch returns the engine's epoch.
func (e *Engine) Epoch() uint64 { return e.cfg.Epoch }

// Written reports whether a primary ever wrote to the volume before this
// engine started: an in-sync replica holds data of an earlier epoch. A
// frontend must then never format what reads as blank.
func (e *Engine) Written() bool { return e.written }

// UnflushedLosses reports how many times the last in-sync replica was
// found back from a power loss, its unflushed writes gone (each time,
// flushes report ErrUnflushedLost as Flush describes).
func (e *Engine) UnflushedLosses() uint64 { return e.lostSeq.Load() }

// Fenced reports whether a newer primary has fenced this engine.
func (e *Engine) Fenced() bool { return e.fenced.Load() }

var _ Device = (*Engine)(nil)
