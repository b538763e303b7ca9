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
	// StateOutOfSync replicas are reachable but miss writes (new or stale);
	// resync brings them back.
	StateOutOfSync ReplicaState = "out-of-sync"
	// StateDropped replicas failed (error, timeout, crash) and were removed
	// from the in-sync set.
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
	// Timeout bounds each replica request; a replica that misses it is
	// dropped. Default 5s.
	Timeout time.Duration
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

	order   sync.Mutex                // orders submissions across replicas
	targets atomic.Pointer[inSyncSet] // current in-sync set; swapped under order
	// stateMu serialises state changes and hook calls.
	stateMu  sync.Mutex
	recorded atomic.Uint64 // version of the newest set the hook recorded
	fenced   atomic.Bool
	readNext atomic.Uint32
	// hold, while non-nil, is a channel closed when Release lifts the hold.
	holdMu sync.Mutex
	hold   atomic.Pointer[chan struct{}]
}

type peer struct {
	cfg    ReplicaConfig
	client *replicaClient
	state  ReplicaState // guarded by Engine.stateMu
	reason string       // guarded by Engine.stateMu
	open   openReply
}

// inSyncSet is an immutable snapshot of the in-sync replicas.
type inSyncSet struct {
	version uint64
	peers   []*peer
}

// StartEngine connects to the replicas, creating any that do not exist,
// promises cfg.Epoch on each (from then on they refuse older primaries),
// records the in-sync set through the hook, and returns a running engine.
// It fails with ErrFenced if a replica has already promised a higher epoch,
// and with ErrNoReplicas if no replica can serve as a source of truth.
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
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.Hook == nil {
		cfg.Hook = LogHook{Log: cfg.Log}
	}
	e := &Engine{cfg: cfg, log: cfg.Log.Named("engine").With("volume_id", cfg.Volume, "epoch", cfg.Epoch)}

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

	var fenced error
	hasData := false
	for i, p := range e.peers {
		if errors.Is(errs[i], ErrStaleEpoch) {
			fenced = errs[i]
		}
		if errs[i] == nil && p.open.Generation > 0 {
			hasData = true
		}
	}
	if fenced != nil {
		e.Close()
		return nil, fmt.Errorf("%w: %w", ErrFenced, fenced)
	}
	var initial []*peer
	for i, p := range e.peers {
		switch {
		case errs[i] != nil:
			p.state, p.reason = StateUnavailable, errs[i].Error()
		case len(cfg.InSync) > 0 && !slices.Contains(cfg.InSync, p.cfg.Addr):
			p.state, p.reason = StateOutOfSync, "not in the recorded in-sync set"
		case len(cfg.InSync) == 0 && p.open.Created && hasData:
			p.state, p.reason = StateOutOfSync, "new, empty replica beside replicas holding data"
		default:
			p.state = StateInSync
			initial = append(initial, p)
		}
		if p.state != StateInSync {
			e.log.Warn("replica not in sync", "replica", p.cfg.Addr, "state", p.state, "reason", p.reason)
		}
	}
	if len(initial) == 0 {
		e.Close()
		why := "none is in the in-sync set"
		if err := errors.Join(errs...); err != nil {
			why = err.Error()
		}
		return nil, fmt.Errorf("%w: volume %s: none of %d replicas is usable: %s", ErrNoReplicas, cfg.Volume, len(cfg.Replicas), why)
	}
	e.targets.Store(&inSyncSet{version: 1, peers: initial})
	if err := e.recordLocked(ctx); err != nil {
		e.Close()
		return nil, err
	}
	e.log.Info("engine started", "size", cfg.Size, "in_sync", len(initial), "replicas", len(cfg.Replicas))
	return e, nil
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

// WriteAt implements Device.
func (e *Engine) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := e.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	var flags uint16
	if fua {
		flags = FlagFUA
	}
	return e.replicate(ctx, Frame{Type: FrameWrite, Flags: flags, Offset: uint64(off), Payload: p})
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

// replicate sends req to every in-sync replica and returns once all have
// applied it, after dropping (and recording) any that failed.
func (e *Engine) replicate(ctx context.Context, req Frame) error {
	if e.fenced.Load() {
		return e.fencedErr()
	}
	psum := payloadSum(req.Payload)
	e.order.Lock()
	set := e.targets.Load()
	calls := make([]*call, len(set.peers))
	for i, p := range set.peers {
		calls[i] = p.client.start(req, psum, nil)
	}
	e.order.Unlock()
	if len(calls) == 0 {
		return fmt.Errorf("%w: volume %s", ErrNoReplicas, e.cfg.Volume)
	}
	var failed map[*peer]error
	ok := 0
	for i, cl := range calls {
		if _, err := set.peers[i].client.wait(cl); err != nil {
			if failed == nil {
				failed = map[*peer]error{}
			}
			failed[set.peers[i]] = err
		} else {
			ok++
		}
	}
	if err := e.settle(ctx, set, failed, ok, req.Type); err != nil {
		return err
	}
	return e.passGate(ctx)
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
	e.Release()
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

// settle decides the outcome of a request sent to set: fence on a stale
// epoch, drop failed replicas, and make sure the in-sync set the request
// relied on is recorded before the request completes.
func (e *Engine) settle(ctx context.Context, set *inSyncSet, failed map[*peer]error, ok int, what FrameType) error {
	for _, err := range failed {
		if errors.Is(err, ErrStaleEpoch) {
			e.fence(err)
			return e.fencedErr()
		}
	}
	if len(failed) > 0 || e.recorded.Load() < set.version {
		if err := e.drop(ctx, failed); err != nil {
			return err
		}
	}
	if ok == 0 {
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

func (e *Engine) fence(cause error) {
	if e.fenced.CompareAndSwap(false, true) {
		e.log.Error("engine fenced by a newer primary: refusing all further I/O", "error", cause)
	}
}

func (e *Engine) fencedErr() error {
	return fmt.Errorf("volume %s epoch %d: %w", e.cfg.Volume, e.cfg.Epoch, ErrFenced)
}

// drop removes failed replicas from the in-sync set and records the new
// set through the hook. It returns only when the set every caller relied on
// is recorded, or with the hook's error.
func (e *Engine) drop(ctx context.Context, failed map[*peer]error) error {
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	changed := false
	for p, err := range failed {
		if p.state != StateInSync {
			continue
		}
		p.state, p.reason = StateDropped, err.Error()
		changed = true
		e.log.Error("dropping replica from the in-sync set", "replica", p.cfg.Addr, "error", err)
		go p.client.close()
	}
	if changed {
		cur := e.targets.Load()
		next := &inSyncSet{version: cur.version + 1}
		for _, p := range cur.peers {
			if p.state == StateInSync {
				next.peers = append(next.peers, p)
			}
		}
		e.order.Lock()
		e.targets.Store(next)
		e.order.Unlock()
	}
	return e.recordLocked(ctx)
}

// recordLocked records the current set through the hook if it has not been
// recorded yet. Callers hold stateMu (or own the engine exclusively).
func (e *Engine) recordLocked(ctx context.Context) error {
	set := e.targets.Load()
	if e.recorded.Load() >= set.version {
		return nil
	}
	addrs := make([]string, len(set.peers))
	for i, p := range set.peers {
		addrs[i] = p.cfg.Addr
	}
	if err := e.cfg.Hook.SetInSync(ctx, e.cfg.Epoch, addrs); err != nil {
		return fmt.Errorf("volume %s: record in-sync set %v: %w", e.cfg.Volume, addrs, err)
	}
	e.recorded.Store(set.version)
	return nil
}

// ReadAt implements Device: it reads from the local replica when that is in
// sync, otherwise from an in-sync peer, moving on to the next one (and
// dropping the failed one) on error.
func (e *Engine) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := e.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	for {
		if e.fenced.Load() {
			return e.fencedErr()
		}
		set := e.targets.Load()
		if len(set.peers) == 0 {
			return fmt.Errorf("%w: volume %s", ErrNoReplicas, e.cfg.Volume)
		}
		src := e.readSource(set)
		_, err := src.client.wait(src.client.start(Frame{Type: FrameRead, Offset: uint64(off), Length: uint64(len(p))}, payloadSum(nil), p))
		if err == nil {
			return e.passGate(ctx)
		}
		if errors.Is(err, ErrStaleEpoch) {
			e.fence(err)
			return e.fencedErr()
		}
		if derr := e.drop(ctx, map[*peer]error{src: err}); derr != nil {
			return derr
		}
	}
}

func (e *Engine) readSource(set *inSyncSet) *peer {
	for _, p := range set.peers {
		if p.cfg.Local {
			return p
		}
	}
	return set.peers[int(e.readNext.Add(1))%len(set.peers)]
}

// ReplicaStatus is one replica's state in EngineStatus.
type ReplicaStatus struct {
	Addr   string       `json:"addr"`
	Local  bool         `json:"local,omitempty"`
	State  ReplicaState `json:"state"`
	Reason string       `json:"reason,omitempty"`
}

// EngineStatus is a snapshot of the engine for operators.
type EngineStatus struct {
	Volume   string          `json:"volume"`
	Size     int64           `json:"size"`
	Epoch    uint64          `json:"epoch"`
	Fenced   bool            `json:"fenced"`
	Held     bool            `json:"held"`
	InSync   int             `json:"in_sync"`
	Replicas []ReplicaStatus `json:"replicas"`
}

// Status returns a snapshot of the engine's state.
func (e *Engine) Status() EngineStatus {
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	st := EngineStatus{Volume: e.cfg.Volume, Size: e.cfg.Size, Epoch: e.cfg.Epoch, Fenced: e.fenced.Load(), Held: e.hold.Load() != nil}
	for _, p := range e.peers {
		st.Replicas = append(st.Replicas, ReplicaStatus{Addr: p.cfg.Addr, Local: p.cfg.Local, State: p.state, Reason: p.reason})
		if p.state == StateInSync {
			st.InSync++
		}
	}
	return st
}

// Close disconnects from every replica. It does not flush: callers that
// want durability Flush first. Outstanding requests fail.
func (e *Engine) Close() {
	for _, p := range e.peers {
		if p.client != nil {
			p.client.close()
		}
	}
}

var _ Device = (*Engine)(nil)
