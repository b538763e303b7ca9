// Package primary makes a node a volume's primary (docs/architecture.md,
// "Promotion, epochs and fencing", steps 1–3): take the volume's primary lease in Consul, read the in-sync
// record, start the replication engine at the lease's epoch over only the
// replicas named there (promising the epoch to each, so they refuse the
// previous primary), and let the lease drive the engine: held while the
// lease is unconfirmed, fenced when it is lost. The engine records in-sync
// changes through the lease (CAS under its session) and the volume's
// health check follows each change, its note naming replicas by node.
// PublishProgress (progress.go) keeps the replicas' states and resync
// progress of every primary on this node in Consul for `saddlebag status`.
//
// It is wiring between leader and replication, used by the node agent, the
// CSI node service (NodeStage/NodeUnstage, and SetReplicas when the
// controller moves a replica) and the failover benchmark. It must not import plugin, scheduler or hcl.
package primary

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// Config says which volume to serve.
type Config struct {
	Agent  *leader.Agent
	Client *leader.Client
	Volume string
	Size   int64
	// Replicas are every replica of the volume; only those in the in-sync
	// record start in sync.
	Replicas []replication.ReplicaConfig
	// Want is the replica count the spec asks for (health); default
	// len(Replicas).
	Want int
	// MinInSync is the fewest in-sync replicas a write completes with
	// (default 1).
	MinInSync int
	// Timeout is the engine's per-request replica timeout (default 5s).
	Timeout time.Duration
	// ResyncRate limits resync traffic per replica, bytes per second (0:
	// unlimited).
	ResyncRate int64
	// Dial connects the engine to replica servers (nil: plain TCP).
	Dial replication.Dialer
	Log  hclog.Logger
}

// Primary is a running primary: a lease and the engine it guards.
type Primary struct {
	Lease  *leader.Lease
	Engine *replication.Engine
	cfg    Config
	hook   *healthHook
	log    hclog.Logger
}

// Promote blocks until this node holds the volume's primary lease, then
// starts the engine at the lease's epoch. If the volume cannot be served
// (no in-sync replica reachable, a newer primary already promised) it
// reports the volume offline with the reason, releases the lease and
// returns the error; it never serves from a replica outside the in-sync
// record.
func Promote(ctx context.Context, cfg Config) (*Primary, error) {
	if cfg.Agent == nil || cfg.Client == nil {
		return nil, fmt.Errorf("%w: primary needs an agent and a client", leader.ErrInvalid)
	}
	if cfg.Want == 0 {
		cfg.Want = len(cfg.Replicas)
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	log := cfg.Log.Named("primary").With("volume_id", cfg.Volume)
	lease, err := cfg.Agent.AcquirePrimary(ctx, cfg.Volume)
	if err != nil {
		return nil, err
	}
	log = log.With("epoch", lease.Epoch())
	fail := func(err error) (*Primary, error) {
		h := leader.OfflineHealth(err.Error())
		if rerr := cfg.Agent.ReportVolume(ctx, cfg.Volume, h); rerr != nil {
			log.Warn("report volume offline", "error", rerr)
		}
		if rerr := lease.Release(context.WithoutCancel(ctx)); rerr != nil {
			log.Warn("release lease", "error", rerr)
		}
		log.Error("volume stays offline", "error", err)
		return nil, err
	}
	rec, err := cfg.Client.RecordedInSync(ctx, cfg.Volume)
	if err != nil {
		return fail(fmt.Errorf("volume %s: read in-sync record: %w", cfg.Volume, err))
	}
	var recorded *wire.Membership
	if rec != nil {
		recorded = &wire.Membership{Gen: rec.Gen, Replicas: rec.Replicas}
	}
	addrs := make([]string, len(cfg.Replicas))
	for i, r := range cfg.Replicas {
		addrs[i] = r.Addr
	}
	hook := &healthHook{w: lease.InSyncWriter(cfg.Agent.Node()), agent: cfg.Agent, volume: cfg.Volume,
		want: cfg.Want, replicas: addrs, log: log, names: nodeNames{client: cfg.Client}}
	ecfg := replication.EngineConfig{
		Volume: cfg.Volume, Size: cfg.Size, Epoch: lease.Epoch(), Replicas: cfg.Replicas,
		Recorded: recorded, MinInSync: cfg.MinInSync, Timeout: cfg.Timeout, Hook: hook, Dial: cfg.Dial, Log: cfg.Log,
		Want: cfg.Want, ResyncRate: cfg.ResyncRate,
	}
	eng, err := replication.StartEngine(ctx, ecfg)
	var stale *replication.StaleEpochError
	if errors.As(err, &stale) {
		// A replica promised an epoch at or above ours although we hold
		// the lock: no current primary can have made that promise, so
		// Consul's lock index restarted (it lost its data). Start above it
		// (which fences whoever made it) instead of staying offline.
		log.Warn("replicas promised a higher epoch than the lock index gives: Consul's lock index was reset",
			"epoch", lease.Epoch(), "promised", stale.Promised)
		if err = lease.RaiseEpoch(ctx, stale.Promised); err == nil {
			ecfg.Epoch = lease.Epoch()
			log = log.With("epoch", ecfg.Epoch)
			eng, err = replication.StartEngine(ctx, ecfg)
		}
	}
	if err != nil {
		return fail(fmt.Errorf("volume %s: start engine at epoch %d: %w", cfg.Volume, lease.Epoch(), err))
	}
	lease.Guard(eng)
	log.Info("serving as primary", "recorded", recorded, "in_sync", eng.Status().InSync)
	return &Primary{Lease: lease, Engine: eng, cfg: cfg, hook: hook, log: log}, nil
}

// Demote stops being primary cleanly: shut the engine down (flush, persist
// the bitmaps of replicas that are behind, clear the activity log),
// release the lease (no lock-delay for the next primary) and drop the
// health check.
func (p *Primary) Demote(ctx context.Context) error {
	var errs []error
	if p.Lease.Err() == nil {
		if err := p.Engine.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("engine shutdown: %w", err))
		}
	}
	p.Engine.Close()
	if err := p.Lease.Release(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := p.cfg.Agent.ForgetVolume(ctx, p.cfg.Volume); err != nil {
		errs = append(errs, err)
	}
	p.log.Info("demoted")
	return errors.Join(errs...)
}

// SetReplicas makes the running engine serve exactly replicas (the
// controller moved the volume's replica set, docs/architecture.md, "Data path"): new ones are
// added and resynced (a full copy for a new replica), and ones no longer
// listed are retired. Retiring the last in-sync replica is refused, and
// the replicas that were not yet retired stay. Safe to call again with
// the same set; calls must not run concurrently.
func (p *Primary) SetReplicas(ctx context.Context, replicas []replication.ReplicaConfig) error {
	addrs := make([]string, len(replicas))
	for i, r := range replicas {
		addrs[i] = r.Addr
		p.Engine.AddReplica(r)
	}
	p.hook.setReplicas(addrs)
	var errs []error
	for _, st := range p.Engine.Status().Replicas {
		if !slices.Contains(addrs, st.Addr) {
			if err := p.Engine.RetireReplica(ctx, st.Addr); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// healthHook records in-sync changes through the lease, then shows the
// volume's health in Consul.
type healthHook struct {
	w      *leader.InSyncWriter
	agent  *leader.Agent
	volume string
	want   int
	log    hclog.Logger
	names  nodeNames

	mu       sync.Mutex
	replicas []string
}

func (h *healthHook) setReplicas(addrs []string) {
	h.mu.Lock()
	h.replicas = slices.Clone(addrs)
	h.mu.Unlock()
}

func (h *healthHook) SetInSync(ctx context.Context, epoch, gen uint64, inSync []string) error {
	if err := h.w.SetInSync(ctx, epoch, gen, inSync); err != nil {
		var lost *leader.LeaseLostError
		var conflict *leader.ConflictError
		if errors.As(err, &lost) || (errors.As(err, &conflict) && conflict.CurrentEpoch > epoch) {
			// Replaced: the engine must stop, not retry.
			return fmt.Errorf("%w: %w", replication.ErrFenced, err)
		}
		return err
	}
	h.mu.Lock()
	replicas := slices.Clone(h.replicas)
	h.mu.Unlock()
	health := leader.ClassifyVolumeNamed(h.want, replicas, inSync, h.names.lookup(ctx, replicas))
	if err := h.agent.ReportVolume(ctx, h.volume, health); err != nil {
		h.log.Warn("report volume health", "error", err)
	}
	return nil
}

var (
	_ replication.InSyncHook = (*healthHook)(nil)
	_ replication.InSyncHook = (*leader.InSyncWriter)(nil)
	_ leader.IOGate          = (*replication.Engine)(nil)
)
