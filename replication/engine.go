package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// InSyncHook records the set of replicas that hold every acknowledged write.
// The engine calls it whenever that set shrinks or grows, and completes no
// write that depends on the change until it has returned nil: after a
// replica is dropped, a new primary must never mistake it for a current one.
//
// Contract: calls are serialised (never concurrent) and each carries the
// whole set. An error leaves the change unrecorded; the engine retries it
// before completing further writes.
type InSyncHook interface {
	SetInSync(ctx context.Context, epoch uint64, inSync []string) error
}

// LogHook is the InSyncHook of a standalone engine: it only logs. The node
// agent uses a Consul-backed hook instead.
type LogHook struct{ Log hclog.Logger }

// SetInSync logs the new set.
func (h LogHook) SetInSync(_ context.Context, epoch uint64, inSync []string) error {
	h.Log.Info("in-sync set changed", "epoch", epoch, "in_sync", inSync)
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
	// InSync, when set, lists the replicas known to hold every
	// acknowledged write (from the coordination layer); the others start
	// out of sync. When empty, every reachable replica that was not just
	// created empty beside replicas holding data counts as in sync.
	InSync []string
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
	// each). Default 128.
	ActivityExtents int
	// Hook records in-sync set changes. Default: LogHook.
	Hook InSyncHook
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

	al     activityLog
	bmMu   sync.Mutex // serialises bitmap persistence
	stats  engineStats
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
	open    openReply
	created bool // known to be a new, empty replica: resync copies everything
	// dirty holds the blocks the replica misses while it is behind; nil
	// while in sync, or when its history is unknown (checksum resync).
	dirty     *Bitmap
	persisted uint64 // dirty.Changes() when last persisted; ^0 forces
	resync    *resyncProgress
	busy      bool      // a resync goroutine owns the peer
	failures  int       // resync attempts failed in a row
	retryAt   time.Time // no resync attempt before this
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
	behind    []*peer  // not receiving writes: their bitmaps record them
}

type byteRange struct{ off, n int64 }

func (r byteRange) overlaps(off, n int64) bool { return off < r.off+r.n && r.off < off+n }

type engineStats struct {
	reconcileExtents atomic.Int64
	reconcileBytes   atomic.Int64
	reconcileBlocks  atomic.Int64
}

// StartEngine connects to the replicas, creating any that do not exist,
// promises cfg.Epoch on each (from then on they refuse older primaries),
// reconciles the extents the previous primary's activity log left hot,
// records the in-sync set through the hook, and returns a running engine
// that resyncs every replica that is behind. It fails with ErrFenced if a
// replica has already promised a higher epoch, and with ErrNoReplicas if no
// replica can serve as a source of truth.
func StartEngine(ctx context.Context, cfg EngineConfig) (*Engine, error) {
	if err := ValidateVolumeID(cfg.Volume); err != nil {
		return nil, err
	}
	if err := ValidateSize(cfg.Size); err != nil {
		return nil, err
	}
	if len(cfg.Replicas) == 0 {
		return nil, fmt.Errorf("%w: no replicas given", ErrInvalid)
	}
	if cfg.MinInSync > len(cfg.Replicas) {
		return nil, fmt.Errorf("%w: min_in_sync %d is above the %d replicas", ErrInvalid, cfg.MinInSync, len(cfg.Replicas))
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
	return e, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// connectAll dials every replica and sorts them into in sync or behind.
func (e *Engine) connectAll(ctx context.Context) error {
	cfg := e.cfg
	errs := make([]error, len(cfg.Replicas))
	var wg sync.WaitGroup
	for i, rc := range cfg.Replicas {
		p := &peer{cfg: rc}
		e.peers = append(e.peers, p)
		wg.Go(func() {
			p.client, p.open, errs[i] = dialReplica(ctx, rc.Addr, cfg.Volume, cfg.Size, cfg.Epoch, true, cfg.Timeout, e.log)
		})
	}
	wg.Wait()
	hasData := false
	for i, p := range e.peers {
		if errors.Is(errs[i], ErrStaleEpoch) {
			return fmt.Errorf("%w: %w", ErrFenced, errs[i])
		}
		if errs[i] == nil && p.open.Generation > 0 {
			hasData = true
		}
	}
	set := &targetSet{version: 1}
	for i, p := range e.peers {
		switch {
		case errs[i] != nil:
			p.state, p.reason = StateUnavailable, errs[i].Error()
		case len(cfg.InSync) > 0 && !slices.Contains(cfg.InSync, p.cfg.Addr):
			p.state, p.reason = StateOutOfSync, "not in the recorded in-sync set"
		case len(cfg.InSync) == 0 && p.open.empty() && hasData:
			p.state, p.reason, p.created = StateOutOfSync, "new, empty replica beside replicas holding data", true
		default:
			p.state = StateInSync
			set.inSync = append(set.inSync, target{p, p.client})
		}
		if p.state != StateInSync {
			e.log.Warn("replica not in sync", "replica", p.cfg.Addr, "state", p.state, "reason", p.reason)
		}
	}
	if len(set.inSync) == 0 {
		why := "none is in the in-sync set"
		if err := errors.Join(errs...); err != nil {
			why = err.Error()
		}
		return fmt.Errorf("%w: volume %s: none of %d replicas is usable: %s", ErrNoReplicas, cfg.Volume, len(cfg.Replicas), why)
	}
	e.targets = set
	return nil
}

// Size returns the volume size in bytes.
func (e *Engine) Size() int64 { return e.cfg.Size }

// Epoch returns the engine's epoch.
func (e *Engine) Epoch() uint64 { return e.cfg.Epoch }

// Fenced reports whether a newer primary has fenced this engine.
func (e *Engine) Fenced() bool { return e.fenced.Load() }

func (e *Engine) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > e.cfg.Size || n > e.cfg.Size-off {
		return fmt.Errorf("%w: [%d, %d) outside volume %s of %d bytes", ErrOutOfRange, off, off+n, e.cfg.Volume, e.cfg.Size)
	}
	return nil
}

// WriteAt implements Device. Writes larger than MaxIOSize go out as
// several requests.
func (e *Engine) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := e.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	var flags uint16
	if fua {
		flags = FlagFUA
	}
	for len(p) > 0 {
		n := min(len(p), MaxIOSize)
		if err := e.replicate(ctx, Frame{Type: FrameWrite, Flags: flags, Offset: uint64(off), Payload: p[:n]}); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Flush implements Device.
func (e *Engine) Flush(ctx context.Context) error {
	return e.replicate(ctx, Frame{Type: FrameFlush})
}

// Trim implements Device.
func (e *Engine) Trim(ctx context.Context, off, n int64) error {
	if err := e.checkRange(off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	return e.replicate(ctx, Frame{Type: FrameTrim, Offset: uint64(off), Length: uint64(n)})
}

// dataRange returns the byte range a request changes, if any.
func dataRange(req *Frame) (int64, int64, bool) {
	switch req.Type {
	case FrameWrite:
		return int64(req.Offset), int64(len(req.Payload)), true
	case FrameTrim:
		return int64(req.Offset), int64(req.Length), true
	}
	return 0, 0, false
}

// replicate sends an application request (write, trim or flush) to every
// in-sync and resyncing replica and returns once all in-sync ones have
// applied it, after dropping (and recording) any that failed.
func (e *Engine) replicate(ctx context.Context, req Frame) error {
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
	psum := payloadSum(req.Payload)
	e.order.Lock()
	for isData && e.lockedLocked(off, n) {
		e.orderCond.Wait()
	}
	set := e.targets
	if isData {
		for _, p := range set.behind {
			p.dirty.SetRange(off, n)
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
	if err := e.settle(ctx, set, calls, req.Type, off, n, isData); err != nil {
		return err
	}
	if err := e.waitMinInSync(ctx); err != nil {
		return err
	}
	return e.passGate(ctx)
}

// broadcast sends a control request (activity log, bitmaps) to every
// in-sync replica and settles the outcome like a write.
func (e *Engine) broadcast(ctx context.Context, req Frame) error {
	if e.fenced.Load() {
		return e.fencedErr()
	}
	psum := payloadSum(req.Payload)
	e.order.Lock()
	set := e.targets
	calls := make([]*call, len(set.inSync))
	for i, t := range set.inSync {
		calls[i] = t.c.startSummed(req, psum, nil)
	}
	e.order.Unlock()
	return e.settle(ctx, set, calls, req.Type, 0, 0, false)
}

// settle waits for calls sent to set.inSync and decides the outcome: fence
// on a stale epoch, drop failed replicas (marking the request's range in
// their bitmaps), and make sure the in-sync set the request relied on is
// recorded before the request completes.
func (e *Engine) settle(ctx context.Context, set *targetSet, calls []*call, what FrameType, off, n int64, isData bool) error {
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
		if errors.Is(err, ErrStaleEpoch) {
			e.fence(fmt.Errorf("a newer primary has taken over: %w", err))
			return e.fencedErr()
		}
	}
	if len(failed) > 0 || e.recorded.Load() < set.version {
		if err := e.drop(ctx, failed, off, n, isData); err != nil {
			return err
		}
	}
	if len(failed) == len(calls) {
		return fmt.Errorf("%w: volume %s: %s failed on every replica: %w", ErrNoReplicas, e.cfg.Volume, what, joinErrs(failed))
	}
	return nil
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
// version when in-sync membership changed. Callers hold stateMu and order.
func (e *Engine) rebuildLocked() *targetSet {
	cur := e.targets
	next := &targetSet{version: cur.version}
	for _, p := range e.peers {
		switch {
		case p.state == StateInSync:
			next.inSync = append(next.inSync, target{p, p.client})
		case p.state == StateResyncing:
			next.resyncing = append(next.resyncing, target{p, p.client})
		case p.dirty != nil:
			next.behind = append(next.behind, p)
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

// drop removes failed replicas from the in-sync set, records the new set
// through the hook, and marks [off, off+n) in each failed replica's bitmap.
// It returns only when the set every caller relied on is recorded, or with
// the hook's error.
func (e *Engine) drop(ctx context.Context, failed map[*peer]error, off, n int64, isData bool) error {
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	changed := false
	for p, err := range failed {
		if p.state != StateInSync {
			if isData && p.dirty != nil {
				p.dirty.SetRange(off, n)
			}
			continue
		}
		p.state, p.reason = StateDropped, err.Error()
		p.dirty = NewBitmap(e.cfg.Size)
		p.persisted = ^uint64(0)
		if isData {
			p.dirty.SetRange(off, n)
		}
		changed = true
		e.log.Error("dropping replica from the in-sync set", "replica", p.cfg.Addr, "error", err)
		go p.client.close()
	}
	if changed {
		e.order.Lock()
		e.setTargetsLocked(e.rebuildLocked())
		e.order.Unlock()
	}
	return e.recordLocked(ctx)
}

// recordLocked records the current set through the hook if it has not been
// recorded yet. Callers hold stateMu.
func (e *Engine) recordLocked(ctx context.Context) error {
	e.order.Lock()
	set := e.targets
	e.order.Unlock()
	if e.recorded.Load() >= set.version {
		return nil
	}
	addrs := make([]string, len(set.inSync))
	for i, t := range set.inSync {
		addrs[i] = t.p.cfg.Addr
	}
	if err := e.setInSync(ctx, addrs); err != nil {
		return fmt.Errorf("volume %s: record in-sync set %v: %w", e.cfg.Volume, addrs, err)
	}
	e.recorded.Store(set.version)
	return nil
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
func (e *Engine) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := e.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	for len(p) > MaxIOSize {
		if err := e.readAt(ctx, p[:MaxIOSize], off); err != nil {
			return err
		}
		p, off = p[MaxIOSize:], off+MaxIOSize
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
		src := e.readSource(set)
		_, err := src.c.wait(src.c.start(Frame{Type: FrameRead, Offset: uint64(off), Length: uint64(len(p))}, p))
		if err == nil {
			return e.passGate(ctx)
		}
		if errors.Is(err, ErrStaleEpoch) {
			e.fence(err)
			return e.fencedErr()
		}
		if derr := e.drop(ctx, map[*peer]error{src.p: err}, 0, 0, false); derr != nil {
			return derr
		}
	}
}

func (e *Engine) readSource(set *targetSet) target {
	for _, t := range set.inSync {
		if t.p.cfg.Local {
			return t
		}
	}
	return set.inSync[int(e.readNext.Add(1))%len(set.inSync)]
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
