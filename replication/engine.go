package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/internal/backoff"
	"github.com/saddlebag/saddlebag/internal/ctxutil"

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
	owner    uint64       // names this engine's promises (Volume.PromiseOwned)
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

// StartEngine connects to the replicas, creating any that do not exist,
// promises cfg.Epoch on each (from then on they refuse older primaries),
// reconciles the extents the previous primary's activity log left hot,
// records the in-sync set through the hook, and returns a running engine
// that resyncs every replica that is behind. It fails with ErrFenced if a
// replica has already promised a higher epoch, and with ErrNoReplicas if no
// replica can serve as a source of truth.
func StartEngine(ctx context.Context, cfg EngineConfig) (*Engine, error) {
	if err := wire.ValidateVolumeID(cfg.Volume); err != nil {
		return nil, err
	}
	if err := wire.ValidateSize(cfg.Size); err != nil {
		return nil, err
	}
	if len(cfg.Replicas) == 0 {
		return nil, fmt.Errorf("%w: no replicas given", ErrInvalid)
	}
	if cfg.MinInSync > len(cfg.Replicas) {
		return nil, fmt.Errorf("%w: min_in_sync %d is above the %d replicas", ErrInvalid, cfg.MinInSync, len(cfg.Replicas))
	}
	if cfg.ActivityExtents != 0 && (cfg.ActivityExtents < 2 || cfg.ActivityExtents > maxActivityExtents) {
		return nil, fmt.Errorf("%w: activity log of %d extents: must be 2 to %d", ErrInvalid, cfg.ActivityExtents, maxActivityExtents)
	}
	setDefault(&cfg.MinInSync, 1)
	setDefault(&cfg.Timeout, 5*time.Second)
	setDefault(&cfg.ReconnectInterval, time.Second)
	setDefault(&cfg.ProgressInterval, 5*time.Second)
	setDefault(&cfg.ActivityExtents, 128)
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.Hook == nil {
		cfg.Hook = LogHook{Log: cfg.Log}
	}
	e := &Engine{cfg: cfg, log: cfg.Log.Named("engine").With("volume_id", cfg.Volume, "epoch", cfg.Epoch),
		changed: make(chan struct{})}
	e.orderCond = sync.NewCond(&e.order)
	e.owner = wire.NewID()
	e.al.init(cfg.ActivityExtents)
	if err := e.connectAll(ctx); err != nil {
		e.Close()
		return nil, err
	}
	if err := e.recover(ctx); err != nil {
		e.Close()
		return nil, err
	}
	e.log.Info("engine started", "size", cfg.Size, "in_sync", len(e.targets.inSync), "replicas", len(cfg.Replicas),
		"min_in_sync", cfg.MinInSync)
	bg, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.wg.Go(func() { e.background(bg) })
	registerEngine(e)
	return e, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// connectAll dials every replica, decides from the recorded in-sync set
// and the replicas' own history which are current (history.go), and sorts
// them into in sync or behind.
func (e *Engine) connectAll(ctx context.Context) error {
	cfg := e.cfg
	errs := make([]error, len(cfg.Replicas))
	var wg sync.WaitGroup
	for i, rc := range cfg.Replicas {
		p := &peer{cfg: rc}
		e.peers = append(e.peers, p)
		wg.Go(func() {
			p.client, p.open, errs[i] = dialReplica(ctx, cfg.Dial, rc.Addr, cfg.Volume, cfg.Size, cfg.Epoch, e.owner, true, cfg.Timeout, e.log)
		})
	}
	wg.Wait()
	var promised uint64
	for i, p := range e.peers {
		if errors.Is(errs[i], wire.ErrStaleEpoch) {
			promised = max(promised, p.open.Epoch)
		}
	}
	if promised > 0 {
		return &StaleEpochError{Epoch: cfg.Epoch, Promised: promised,
			Err: fmt.Errorf("%w: %w", ErrFenced, errors.Join(errs...))}
	}
	configured := make([]string, len(e.peers))
	reach := map[string]wire.OpenReply{}
	for i, p := range e.peers {
		configured[i] = p.cfg.Addr
		if errs[i] == nil {
			reach[p.cfg.Addr] = p.open
		}
	}
	view, source, err := chooseView(cfg.Recorded, configured, reach)
	if err != nil {
		return fmt.Errorf("%w: volume %s: %w", ErrNoReplicas, cfg.Volume, err)
	}
	e.gen, e.genTried = view.Gen, view.Gen
	set := &targetSet{version: 1}
	for i, p := range e.peers {
		// A replica that holds nothing at all gets a full copy of what is
		// allocated instead of a compare.
		p.created = errs[i] == nil && p.open.HoldsNothing()
		switch {
		case errs[i] != nil:
			p.state, p.reason = StateUnavailable, errs[i].Error()
		case !current(view, p.cfg.Addr, p.open):
			p.state, p.reason = StateOutOfSync, describeStale(view, p.cfg.Addr, p.open)
		default:
			p.state, p.created = StateInSync, false
			set.inSync = append(set.inSync, target{p, p.client})
			e.written = e.written || p.open.Generation > 0
		}
		if p.state != StateInSync {
			e.log.Warn("replica not in sync", "replica", p.cfg.Addr, "state", p.state, "reason", p.reason)
		}
	}
	if len(set.inSync) == 0 {
		var why []string
		for _, p := range e.peers {
			why = append(why, p.cfg.Addr+": "+p.reason)
		}
		return fmt.Errorf("%w: volume %s: no replica of the in-sync set of generation %d %v is usable (%s)",
			ErrNoReplicas, cfg.Volume, view.Gen, view.Replicas, strings.Join(why, "; "))
	}
	e.log.Info("in-sync set chosen", "generation", view.Gen, "members", view.Replicas, "from", source, "in_sync", len(set.inSync))
	e.targets = set
	return nil
}

// StaleEpochError is StartEngine's error when a replica has promised an
// epoch at or above the engine's: a newer primary exists, or the
// coordination layer's epochs restarted (Consul lost its data). Promised
// is the highest promise seen, for a caller that can prove it holds the
// lease and so may start again above it.
type StaleEpochError struct {
	Epoch, Promised uint64
	Err             error
}

func (e *StaleEpochError) Error() string {
	return fmt.Sprintf("epoch %d: a replica has promised epoch %d: %v", e.Epoch, e.Promised, e.Err)
}

func (e *StaleEpochError) Unwrap() error { return e.Err }

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

func (e *Engine) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > e.cfg.Size || n > e.cfg.Size-off {
		return fmt.Errorf("%w: [%d, %d) outside volume %s of %d bytes", ErrOutOfRange, off, off+n, e.cfg.Volume, e.cfg.Size)
	}
	return nil
}

// WriteAt implements Device. Writes larger than wire.MaxIOSize (or than the
// activity log spans) go out as several requests.
func (e *Engine) WriteAt(ctx context.Context, p []byte, off int64, fua bool) (err error) {
	defer e.io[OpWrite].done(time.Now(), int64(len(p)), &err)
	if err := e.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	var flags uint16
	if fua {
		flags = wire.FlagFUA
	}
	// A piece spans at most as many extents as the activity log holds.
	limit := min(wire.MaxIOSize, (e.al.cap-1)*ExtentSize)
	for len(p) > 0 {
		n := min(len(p), limit)
		if err := e.replicate(ctx, wire.Frame{Type: wire.FrameWrite, Flags: flags, Offset: uint64(off), Payload: p[:n]}); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Flush implements Device.
//
// When the last in-sync replica's host lost power since the previous
// flush, the writes acknowledged since then are gone everywhere: every
// flush in flight when that was found fails (ErrUnflushedLost), and so
// does the next one started after it, once, as Linux reports a writeback
// error to the next fsync, instead of claiming them durable.
func (e *Engine) Flush(ctx context.Context) (err error) {
	defer e.io[OpFlush].done(time.Now(), 0, &err)
	before := e.lostSeq.Load()
	if err := e.replicate(ctx, wire.Frame{Type: wire.FrameFlush}); err != nil {
		return err
	}
	now := e.lostSeq.Load()
	if seen := e.lostSeen.Swap(now); now != before || seen != now {
		return fmt.Errorf("volume %s: %w", e.cfg.Volume, ErrUnflushedLost)
	}
	return nil
}

// Trim implements Device. A large trim goes out as pieces of at most
// trimPieceExtents extents each, so that one request never makes the
// activity log outgrow its bound (a blkdiscard of a whole volume, a
// WRITE_ZEROES of many GiB).
func (e *Engine) Trim(ctx context.Context, off, n int64) (err error) {
	defer e.io[OpTrim].done(time.Now(), n, &err)
	if err := e.checkRange(off, n); err != nil {
		return err
	}
	piece := int64(max(1, e.al.cap/8)) * ExtentSize
	for n > 0 {
		// End each piece on an extent boundary so it spans the fewest.
		l := min(n, piece-off%ExtentSize)
		if err := e.replicate(ctx, wire.Frame{Type: wire.FrameTrim, Offset: uint64(off), Length: uint64(l)}); err != nil {
			return err
		}
		off, n = off+l, n-l
	}
	return nil
}

// dataRange returns the byte range a request changes, if any.
func dataRange(req *wire.Frame) (int64, int64, bool) {
	switch req.Type {
	case wire.FrameWrite:
		return int64(req.Offset), int64(len(req.Payload)), true
	case wire.FrameTrim:
		return int64(req.Offset), int64(req.Length), true
	}
	return 0, 0, false
}

// errReconnecting is settle's answer when the request failed on every
// in-sync replica and the one kept as the volume's copy lost its
// connection: the request is sent again once it is back.
var errReconnecting = errors.New("the last in-sync replica is reconnecting")

// replicate sends an application request (write, trim or flush) to every
// in-sync and resyncing replica and returns once all in-sync ones have
// applied it, after dropping (and recording) any that failed. When it
// failed on all of them, the last one stays the volume's copy (the in-sync
// set is never empty): the request is sent again once that replica is
// reconnected, or fails with its error when the replica answered with one.
func (e *Engine) replicate(ctx context.Context, req wire.Frame) error {
	if e.fenced.Load() {
		return e.fencedErr()
	}
	off, n, isData := dataRange(&req)
	if isData {
		first, last := extentSpan(off, n)
		if err := e.alAcquire(ctx, first, last); err != nil {
			return err
		}
		defer e.alRelease(first, last)
	}
	if err := e.apply(ctx, req); err != nil {
		return err
	}
	if err := e.waitMinInSync(ctx); err != nil {
		return err
	}
	return e.passGate(ctx)
}

// apply sends req to every in-sync and resyncing replica and settles it,
// sending it again while the last in-sync replica reconnects.
func (e *Engine) apply(ctx context.Context, req wire.Frame) error {
	off, n, isData := dataRange(&req)
	psum := wire.PayloadSum(req.Payload)
	for {
		e.order.Lock()
		for isData && e.lockedLocked(off, n) {
			e.orderCond.Wait()
		}
		if e.fenced.Load() {
			// Fenced while it waited (for a resync's lock, for room in the
			// activity log): a fenced primary sends nothing more.
			e.order.Unlock()
			return e.fencedErr()
		}
		set := e.targets
		if isData {
			for _, b := range set.behind {
				b.SetRange(off, n)
			}
		}
		calls := make([]*call, len(set.inSync))
		for i, t := range set.inSync {
			calls[i] = t.c.startSummed(req, psum, nil)
		}
		rcalls := make([]*call, len(set.resyncing))
		for i, t := range set.resyncing {
			rcalls[i] = t.c.startSummed(req, psum, nil)
		}
		e.order.Unlock()

		for i, cl := range rcalls {
			if _, err := set.resyncing[i].c.wait(cl); err != nil {
				e.resyncTargetFailed(set.resyncing[i], err, off, n, isData)
			}
		}
		err := e.settle(ctx, set, calls, req.Type, off, n, isData)
		if errors.Is(err, errReconnecting) {
			if err := e.waitReconnect(ctx); err != nil {
				if isData {
					e.markUncertain(set, off, n)
				}
				return err
			}
			continue
		}
		return err
	}
}

// markUncertain records that a data request sent to set.inSync was
// abandoned while every one of their connections was broken: any of them
// may hold it.
func (e *Engine) markUncertain(set *targetSet, off, n int64) {
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	for _, t := range set.inSync {
		if t.p.state != StateInSync {
			continue // dropped since, with a bitmap of its own
		}
		if t.p.uncertain == nil {
			t.p.uncertain = NewBitmap(e.cfg.Size)
		}
		t.p.uncertain.SetRange(off, n)
	}
}

// broadcast sends a control request (activity log, bitmaps) to every
// in-sync replica and settles the outcome like a write.
func (e *Engine) broadcast(ctx context.Context, req wire.Frame) error {
	for {
		if e.fenced.Load() {
			return e.fencedErr()
		}
		psum := wire.PayloadSum(req.Payload)
		e.order.Lock()
		set := e.targets
		calls := make([]*call, len(set.inSync))
		for i, t := range set.inSync {
			calls[i] = t.c.startSummed(req, psum, nil)
		}
		e.order.Unlock()
		err := e.settle(ctx, set, calls, req.Type, 0, 0, false)
		if !errors.Is(err, errReconnecting) {
			return err
		}
		if err := e.waitReconnect(ctx); err != nil {
			return err
		}
	}
}

// settle waits for calls sent to set.inSync and decides the outcome: fence
// on a stale epoch, drop failed replicas (marking what they may miss in
// their bitmaps), and make sure the in-sync set the request relied on is
// recorded before the request completes.
func (e *Engine) settle(ctx context.Context, set *targetSet, calls []*call, what wire.FrameType, off, n int64, isData bool) error {
	if len(calls) == 0 {
		return fmt.Errorf("%w: volume %s", ErrNoReplicas, e.cfg.Volume)
	}
	var failed map[*peer]error
	for i, cl := range calls {
		if _, err := set.inSync[i].c.wait(cl); err != nil {
			if failed == nil {
				failed = map[*peer]error{}
			}
			failed[set.inSync[i].p] = err
		}
	}
	for _, err := range failed {
		if errors.Is(err, wire.ErrStaleEpoch) {
			e.fence(fmt.Errorf("a newer primary has taken over: %w", err))
			return e.fencedErr()
		}
	}
	if len(failed) == 0 && e.recorded.Load() >= set.version {
		return nil
	}
	kept, err := e.drop(ctx, failed, set.resyncing, off, n, isData)
	if err != nil {
		return err
	}
	// kept is the copy the volume keeps when the request failed on every
	// in-sync replica, or on every one with a working connection.
	e.stateMu.Lock()
	alive := kept != nil && kept.client != nil && kept.client.failure() == nil
	e.stateMu.Unlock()
	if len(failed) < len(calls) && (kept == nil || alive) {
		return nil
	}
	if alive {
		return fmt.Errorf("volume %s: %s failed on its last in-sync replica: %w", e.cfg.Volume, what, failed[kept])
	}
	return errReconnecting
}

func joinErrs(m map[*peer]error) error {
	var errs []error
	for _, err := range m {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// fence stops the engine for good and wakes every held or waiting request,
// which then fails with ErrFenced.
func (e *Engine) fence(cause error) {
	if e.fenced.CompareAndSwap(false, true) {
		e.log.Error("engine fenced: refusing all further I/O", "error", cause)
		e.order.Lock()
		e.notifyLocked()
		e.order.Unlock()
	}
	e.Release()
}

func (e *Engine) fencedErr() error {
	return fmt.Errorf("volume %s epoch %d: %w", e.cfg.Volume, e.cfg.Epoch, ErrFenced)
}

// setTargetsLocked installs a new snapshot; the caller holds order.
func (e *Engine) setTargetsLocked(next *targetSet) {
	e.targets = next
	e.notifyLocked()
}

func (e *Engine) notifyLocked() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// rebuildLocked derives a snapshot from the peers' states, bumping the
// version when in-sync membership changed. When a member left, resyncs
// in progress are aborted: their targets must not receive a write the
// member misses before they are marked with the next generation (see
// Meta.TargetGen); they restart with the next attempt. Callers hold
// stateMu and order.
func (e *Engine) rebuildLocked() *targetSet {
	cur := e.targets
	next := &targetSet{version: cur.version}
	left := slices.ContainsFunc(cur.inSync, func(t target) bool { return t.p.state != StateInSync })
	for _, p := range e.peers {
		if left && p.state == StateResyncing {
			p.state, p.reason = StateDropped, "an in-sync replica left during its resync: it restarts under the new in-sync set"
			if p.client != nil {
				go p.client.close()
			}
			e.log.Warn("resync aborted: an in-sync replica left; it restarts under the new in-sync set", "replica", p.cfg.Addr)
		}
		switch {
		case p.state == StateInSync:
			next.inSync = append(next.inSync, target{p, p.client})
		case p.state == StateResyncing:
			next.resyncing = append(next.resyncing, target{p, p.client})
		case p.dirty != nil:
			next.behind = append(next.behind, p.dirty)
		}
	}
	if !sameMembers(cur.inSync, next.inSync) {
		next.version++
	}
	return next
}

func sameMembers(a, b []target) bool {
	return slices.EqualFunc(a, b, func(x, y target) bool { return x.p == y.p })
}

// markUnflushed records what a failed replica may lack: the request's
// range in its bitmap, and every extent of the activity log as possibly
// lost. A replica acknowledges a write once it is in its page cache; if
// its host loses power before the next flush, every write since its last
// flush is gone. The activity log holds every extent written since the
// last flush on all replicas (an extent leaves it only after one), so it
// covers them. Whether they were lost is known when the replica is back
// (settleUnflushed): only if its host rebooted. Callers hold stateMu;
// p.dirty is not nil.
func (e *Engine) markUnflushed(p *peer, off, n int64, isData bool) {
	if isData {
		p.dirty.SetRange(off, n)
	}
	if p.unflushed == nil {
		p.unflushed, p.unflushedBoot = map[uint64]bool{}, p.open.BootID
	}
	for _, x := range e.al.all() {
		p.unflushed[x] = true
	}
}

// settleUnflushed decides, for a replica that is back and reported open,
// whether it lost the writes markUnflushed recorded: when its host
// rebooted since (or cannot say), they go into its bitmap. A process that
// only crashed kept them in the page cache, but they are still not
// durable there: they stay recorded (and in its persisted bitmap) until a
// flush on it completes (rejoin), so that a power loss before that, even
// during its resync, still resyncs them. Callers hold stateMu.
func (e *Engine) settleUnflushed(p *peer, open wire.OpenReply) {
	if p.unflushed == nil {
		return
	}
	if p.dirty != nil {
		if rebooted := open.BootID == "" || p.unflushedBoot == "" || open.BootID != p.unflushedBoot; !rebooted {
			return
		}
		for x := range p.unflushed {
			p.dirty.SetRange(int64(x)*ExtentSize, ExtentSize)
		}
		e.log.Info("replica's host restarted since it was dropped: resyncing the extents it may have lost unflushed",
			"replica", p.cfg.Addr, "extents", len(p.unflushed))
	}
	p.unflushed, p.unflushedBoot = nil, ""
}

// drop removes failed replicas from the in-sync set, records the new set,
// and marks in each failed replica's bitmap what it may miss. The in-sync
// set never becomes empty: when every in-sync replica failed, one of them
// (one that answered with an error before one whose connection broke, the
// local one before a remote one) stays the volume's copy and is returned.
// So when the request's connections broke and every other in-sync replica
// is itself away (its connection broke with nothing in flight, and it is
// being reconnected): they are all kept, and one whose connection broke
// is returned.
// drop returns only when the set every caller relied on is recorded.
func (e *Engine) drop(ctx context.Context, failed map[*peer]error, resyncing []target, off, n int64, isData bool) (*peer, error) {
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	var kept *peer
	keep := map[*peer]bool{}
	remaining, remainingUp, failedInSync, failedUp := 0, 0, 0, 0
	for _, p := range e.peers {
		if p.state != StateInSync {
			continue
		}
		up := p.client != nil && p.client.failure() == nil
		switch {
		case failed[p] == nil:
			remaining++
			if up {
				remainingUp++
			}
		default:
			failedInSync++
			if up {
				failedUp++
			}
		}
	}
	// The request's connections broke and no other in-sync replica has a
	// working one: those others are away, not the volume's copy. Dropping
	// the failed ones for them would bet the volume on a replica already
	// gone (simulator seed 851711047: the one left had been wiped, while
	// the one dropped, partitioned, held every acknowledged write, and I/O
	// stayed held for good). As when every connection breaks at once, all
	// stay; the first back with its history is the copy.
	allAway := len(failed) > 0 && failedInSync > 0 && failedUp == 0 && remainingUp == 0
	if (remaining == 0 || allAway) && len(failed) > 0 && isData {
		// The request failed on every in-sync replica, but the replicas
		// it was sent to as resync targets may have applied it: they now
		// differ from the copy there. Whatever became of their resync
		// since (it may have ended, aborted, between their reply and
		// now), they get the range back from the copy, and a resync still
		// running must not end on what it copied before. Done under
		// stateMu with the in-sync check above, so that none of them can
		// have rejoined in between.
		for _, t := range resyncing {
			if t.p.dirty != nil {
				t.p.dirty.SetRange(off, n)
			}
			t.p.missed++
		}
	}
	if (remaining == 0 || allAway) && len(failed) > 0 {
		for _, p := range e.peers {
			if failed[p] == nil || p.state != StateInSync {
				continue
			}
			alive := p.client != nil && p.client.failure() == nil
			best := kept == nil
			if kept != nil {
				keptAlive := kept.client != nil && kept.client.failure() == nil
				best = (alive && !keptAlive) || (alive == keptAlive && p.cfg.Local && !kept.cfg.Local)
			}
			if best {
				kept = p
			}
		}
		if kept != nil && kept.client != nil && kept.client.failure() == nil {
			// One answered (with an error): it stays the copy.
			keep[kept] = true
			e.log.Error("every in-sync replica failed the request: keeping one as the volume's copy",
				"replica", kept.cfg.Addr, "error", failed[kept])
		} else if kept != nil {
			// Every connection broke at once: each of them holds every
			// acknowledged write, and which one comes back intact is not
			// known yet (one may have been wiped). Keep them all; the
			// first back with its history is the copy, and the others are
			// dropped then.
			var addrs []string
			for _, p := range e.peers {
				if p.state == StateInSync {
					if failed[p] != nil {
						keep[p] = true
					}
					addrs = append(addrs, p.cfg.Addr)
				}
			}
			slices.Sort(addrs)
			e.log.Error("every in-sync replica's connection broke: keeping them all until one is back", "replicas", addrs)
		}
	}
	changed := false
	for p, err := range failed {
		if keep[p] {
			continue
		}
		if p.state != StateInSync {
			if isData && p.dirty != nil {
				p.dirty.SetRange(off, n)
			}
			p.missed++
			continue
		}
		p.state, p.reason = StateDropped, err.Error()
		e.stats.drops.Add(1)
		p.startBitmap(e.cfg.Size)
		p.takeUncertain()
		e.markUnflushed(p, off, n, isData)
		changed = true
		e.log.Error("dropping replica from the in-sync set", "replica", p.cfg.Addr, "error", err)
		go p.client.close()
	}
	if changed {
		e.order.Lock()
		e.setTargetsLocked(e.rebuildLocked())
		e.order.Unlock()
	}
	return kept, e.recordLocked(ctx)
}

// recordLocked records the current in-sync set if it has not been
// recorded yet: first on every member (its generation, durably), then
// through the hook. A member that fails to take it is dropped and the
// smaller set recorded instead, except the last, which is kept and waited
// for (errReconnecting). Hook failures (Consul unreachable) are retried,
// holding the writes that wait for the record, until the hook succeeds,
// the engine is fenced, or ctx ends. Callers hold stateMu, which is
// released while it waits between attempts.
func (e *Engine) recordLocked(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		e.order.Lock()
		set := e.targets
		e.order.Unlock()
		if e.recorded.Load() >= set.version {
			return nil
		}
		if e.fenced.Load() {
			return e.fencedErr()
		}
		addrs := make([]string, len(set.inSync))
		for i, t := range set.inSync {
			addrs[i] = t.p.cfg.Addr
		}
		if e.genSet != set.version {
			m := wire.Membership{Gen: max(e.genTried+1, epochGenBase(e.cfg.Epoch)), Replicas: addrs} // genTried >= gen
			e.genTried = m.Gen
			if retry, err := e.writeMembershipLocked(set, m); err != nil || retry {
				if err != nil {
					return err
				}
				continue // a member failed and was dropped: record the smaller set
			}
			e.gen, e.genSet = m.Gen, set.version
		}
		err := e.setInSync(ctx, e.gen, addrs)
		if err == nil {
			e.recorded.Store(set.version)
			return nil
		}
		if errors.Is(err, ErrFenced) {
			e.fence(err)
			return e.fencedErr()
		}
		if attempt == 0 {
			e.log.Warn("recording the in-sync set failed: holding the writes that depend on it and retrying",
				"in_sync", addrs, "generation", e.gen, "error", err)
		}
		// Let status readers and reconnects in while waiting; the loop
		// reads the set again after.
		e.holding.Add(1)
		e.stateMu.Unlock()
		// Held writes resume at most 250 ms after the hook works again
		// (a Consul blip): asking the local agent is cheap.
		werr := ctxutil.Sleep(ctx, backoff.Delay(50*time.Millisecond, 250*time.Millisecond, attempt))
		e.stateMu.Lock()
		e.holding.Add(-1)
		if werr != nil {
			return fmt.Errorf("volume %s: record in-sync set %v: %w (last error: %w)", e.cfg.Volume, addrs, werr, err)
		}
	}
}

// epochGenBase is the lowest generation an engine at epoch may write: the
// epoch in the high 32 bits. Generations are so ordered by (epoch, count)
// and a newer primary's sets always outrank an older one's, even those it
// could not see: a primary that found some replicas unreachable cannot
// know which numbers the previous one wrote to them, and a plain counter
// let an old set written to an unreachable replica outrank the newer
// primary's (simulator seed 69156776: acknowledged writes discarded).
// Epochs beyond 2^31 (never in practice: a replica refuses jumps over
// 2^32) get the largest base.
func epochGenBase(epoch uint64) uint64 {
	return min(epoch, 1<<31-1) << 32
}

// writeMembershipLocked writes m to every member of set. A member that
// fails is dropped (retry: the caller records the smaller set), unless it
// is the last one: then errReconnecting when its connection broke, or its
// error. Callers hold stateMu.
func (e *Engine) writeMembershipLocked(set *targetSet, m wire.Membership) (retry bool, err error) {
	payload, _ := json.Marshal(m)
	calls := make([]*call, len(set.inSync))
	for i, t := range set.inSync {
		calls[i] = t.c.start(wire.Frame{Type: wire.FrameMembership, Payload: payload}, nil)
	}
	var failed []int
	var errs []error
	for i, t := range set.inSync {
		if _, err := t.c.wait(calls[i]); err != nil {
			if errors.Is(err, wire.ErrStaleEpoch) {
				e.fence(err)
				return false, e.fencedErr()
			}
			failed, errs = append(failed, i), append(errs, err)
		}
	}
	for i, t := range set.inSync {
		if !slices.Contains(failed, i) {
			t.p.open.Membership = m
		}
	}
	if len(failed) == 0 {
		return false, nil
	}
	if len(failed) == len(set.inSync) {
		t := set.inSync[failed[0]]
		if t.c.failure() != nil {
			return false, errReconnecting
		}
		return false, fmt.Errorf("volume %s: record generation %d on the last in-sync replica %s: %w", e.cfg.Volume, m.Gen, t.p.cfg.Addr, errs[0])
	}
	for j, i := range failed {
		p := set.inSync[i].p
		p.state, p.reason = StateDropped, errs[j].Error()
		// It may hold m or the generation before it: if m, the bitmap's
		// generation differs and a later resync compares it whole.
		p.startBitmap(e.cfg.Size)
		e.markUnflushed(p, 0, 0, false)
		e.log.Error("dropping replica that failed to record the in-sync set", "replica", p.cfg.Addr, "error", errs[j])
		go p.client.close()
	}
	e.order.Lock()
	e.setTargetsLocked(e.rebuildLocked())
	e.order.Unlock()
	return true, nil
}

// waitReconnect waits until an in-sync replica has a working connection
// again (the background loop reconnects them), the engine is fenced, or
// ctx ends. The request is then sent again, and the in-sync replicas
// still unreachable are dropped as for any failure.
func (e *Engine) waitReconnect(ctx context.Context) error {
	e.holding.Add(1)
	defer e.holding.Add(-1)
	logged := false
	for {
		e.order.Lock()
		set, ch := e.targets, e.changed
		e.order.Unlock()
		if e.fenced.Load() {
			return e.fencedErr()
		}
		if len(connected(set)) > 0 {
			return nil
		}
		if !logged {
			e.log.Warn("holding I/O: the last in-sync replica is unreachable; waiting for it to come back")
			logged = true
		}
		select {
		case <-ch:
		case <-time.After(e.cfg.ReconnectInterval):
		case <-ctx.Done():
			return fmt.Errorf("volume %s: I/O held for the last in-sync replica abandoned: %w", e.cfg.Volume, ctx.Err())
		}
	}
}

// waitMinInSync blocks while fewer than MinInSync replicas are in sync.
func (e *Engine) waitMinInSync(ctx context.Context) error {
	logged := false
	for {
		e.order.Lock()
		have, ch := len(e.targets.inSync), e.changed
		e.order.Unlock()
		if e.fenced.Load() {
			return e.fencedErr()
		}
		if have >= e.cfg.MinInSync {
			return nil
		}
		if !logged {
			e.log.Warn("holding write: fewer replicas in sync than min_in_sync", "in_sync", have, "min_in_sync", e.cfg.MinInSync)
			logged = true
			e.holds.minInSync.Add(1)
			defer e.holds.minInSync.Add(-1)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("volume %s: write held for min_in_sync=%d abandoned: %w", e.cfg.Volume, e.cfg.MinInSync, ctx.Err())
		}
	}
}

// ReadAt implements Device: it reads from the local replica when that is in
// sync, otherwise from an in-sync peer, moving on to the next one (and
// dropping the failed one) on error.
func (e *Engine) ReadAt(ctx context.Context, p []byte, off int64) (err error) {
	defer e.io[OpRead].done(time.Now(), int64(len(p)), &err)
	if err := e.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	for len(p) > wire.MaxIOSize {
		if err := e.readAt(ctx, p[:wire.MaxIOSize], off); err != nil {
			return err
		}
		p, off = p[wire.MaxIOSize:], off+wire.MaxIOSize
	}
	return e.readAt(ctx, p, off)
}

func (e *Engine) readAt(ctx context.Context, p []byte, off int64) error {
	for {
		if e.fenced.Load() {
			return e.fencedErr()
		}
		e.order.Lock()
		set := e.targets
		e.order.Unlock()
		if len(set.inSync) == 0 {
			return fmt.Errorf("%w: volume %s", ErrNoReplicas, e.cfg.Volume)
		}
		src, ok := e.readSource(set)
		if !ok {
			// Every in-sync replica is reconnecting: read once one is back.
			if werr := e.waitReconnect(ctx); werr != nil {
				return werr
			}
			continue
		}
		_, err := src.c.wait(src.c.start(wire.Frame{Type: wire.FrameRead, Offset: uint64(off), Length: uint64(len(p))}, p))
		if err == nil {
			return e.passGate(ctx)
		}
		if errors.Is(err, wire.ErrStaleEpoch) {
			e.fence(err)
			return e.fencedErr()
		}
		kept, derr := e.drop(ctx, map[*peer]error{src.p: err}, nil, 0, 0, false)
		if errors.Is(derr, errReconnecting) || (derr == nil && kept == src.p && src.c.failure() != nil) {
			// The last in-sync replica's connection broke: read again
			// once it is back.
			if werr := e.waitReconnect(ctx); werr != nil {
				return werr
			}
			continue
		}
		if derr != nil {
			return derr
		}
		if kept == src.p {
			return fmt.Errorf("volume %s: read failed on its last in-sync replica: %w", e.cfg.Volume, err)
		}
	}
}

// readSource picks the in-sync replica to read from: the local one, or
// the next one in turn, among those with a working connection; false if
// none has one.
func (e *Engine) readSource(set *targetSet) (target, bool) {
	up := connected(set)
	if len(up) == 0 {
		return target{}, false
	}
	for _, t := range up {
		if t.p.cfg.Local {
			return t, true
		}
	}
	return up[int(e.readNext.Add(1))%len(up)], true
}

// connected returns the in-sync targets with a working connection.
func connected(set *targetSet) []target {
	var up []target
	for _, t := range set.inSync {
		if t.c != nil && t.c.failure() == nil {
			up = append(up, t)
		}
	}
	return up
}

// Hold makes the engine stop completing I/O: requests still run, but none
// returns success until Release, and one held when Fence is called fails
// with ErrFenced. The coordination layer holds I/O while it cannot confirm
// the primary lease, so a cut-off primary completes nothing a new primary
// could miss. Hold, Release and Fence are safe to call concurrently.
func (e *Engine) Hold() {
	e.holdMu.Lock()
	defer e.holdMu.Unlock()
	if e.hold.Load() == nil {
		ch := make(chan struct{})
		e.hold.Store(&ch)
		e.stats.holds.Add(1)
		e.log.Warn("holding I/O until the primary lease is confirmed")
	}
}

// Release lifts a Hold.
func (e *Engine) Release() {
	e.holdMu.Lock()
	defer e.holdMu.Unlock()
	if ch := e.hold.Load(); ch != nil {
		e.hold.Store(nil)
		close(*ch)
		e.log.Info("released held I/O")
	}
}

// Fence stops the engine for good: every request, including held ones,
// fails with ErrFenced. The coordination layer calls it when the primary
// lease is lost; a stale-epoch reply from a replica does the same.
func (e *Engine) Fence(cause error) {
	e.fence(cause)
}

// passGate waits while the engine is held and fails once it is fenced.
func (e *Engine) passGate(ctx context.Context) error {
	for {
		ch := e.hold.Load()
		if ch == nil {
			break
		}
		select {
		case <-*ch:
		case <-ctx.Done():
			return fmt.Errorf("volume %s: held I/O abandoned: %w", e.cfg.Volume, ctx.Err())
		}
	}
	if e.fenced.Load() {
		return e.fencedErr()
	}
	return nil
}

// Shutdown stops the engine cleanly: it flushes every in-sync replica,
// persists the bitmaps of replicas that are behind, clears the activity log
// (nothing is in flight, so a later primary need reconcile nothing) and
// closes the connections. After an error the engine is closed anyway and a
// later primary reconciles as after a crash.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.stopBackground()
	err := e.Flush(ctx)
	if err == nil {
		err = e.persistBitmaps(ctx, true)
	}
	if err == nil {
		err = e.clearActivityLog(ctx)
	}
	e.Close()
	return err
}

// Close disconnects from every replica without flushing; outstanding
// requests fail. A later primary treats this like a crash.
func (e *Engine) Close() {
	defer unregisterEngine(e)
	e.stopBackground()
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	for _, p := range e.peers {
		if p.client != nil {
			p.client.close()
		}
	}
}

func (e *Engine) stopBackground() {
	if e.cancel != nil {
		e.cancel()
	}
	e.wg.Wait()
}

var _ Device = (*Engine)(nil)
