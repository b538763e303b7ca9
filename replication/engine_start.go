package replication

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// Starting an engine (connecting, promising, choosing the current
// replicas) and stopping it.

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
		p.created = errs[i] == nil && holdsNothing(p.open)
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
