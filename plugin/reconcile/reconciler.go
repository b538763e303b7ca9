package reconcile

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
)

// Config configures a Reconciler. Every field is required but Dial, Log
// and Now.
type Config struct {
	Client *leader.Client
	// Dial connects to replica servers (nil: plain TCP).
	Dial replication.Dialer
	// ReplicaTimeout bounds each request to a replica server.
	ReplicaTimeout time.Duration
	// Grace is how long a replica's node may be down before the replica
	// is replaced on another node.
	Grace time.Duration
	// CreateTimeout is how long a volume may stay "creating" before its
	// replicas and record are removed.
	CreateTimeout time.Duration
	// TryLock takes a volume's lock if it is free and returns its unlock,
	// or nil when an RPC holds it: the lock the Controller's RPCs take.
	TryLock func(volume string) (unlock func())
	Log     hclog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Reconciler runs the passes of one tenure as the active controller; it
// remembers when each node was first seen down. Contract: Pass and the
// other methods are called from one goroutine at a time.
type Reconciler struct {
	cfg       Config
	log       hclog.Logger
	downSince map[string]time.Time
}

// New returns a Reconciler that has seen no node down yet.
func New(cfg Config) (*Reconciler, error) {
	if cfg.Client == nil || cfg.TryLock == nil || cfg.ReplicaTimeout <= 0 || cfg.Grace <= 0 || cfg.CreateTimeout <= 0 {
		return nil, fmt.Errorf("%w: reconcile needs a consul client, the volume locks and positive timeouts", leader.ErrInvalid)
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Reconciler{cfg: cfg, log: cfg.Log, downSince: map[string]time.Time{}}, nil
}

// Pass runs each background job once under lease: it snapshots the
// nodes and volumes, notes which nodes went down, removes interrupted
// creates, sweeps the tombstones of nodes that are back, records the
// replacements of replicas lost for good and completes those in sync. A
// job's failure does not stop the others; the errors come back joined
// and the next pass retries.
func (rc *Reconciler) Pass(ctx context.Context, lease *leader.Lease) error {
	nodes, vols, err := Snapshot(ctx, rc.cfg.Client)
	if err != nil {
		return err
	}
	now := rc.cfg.Now()
	for _, n := range nodes {
		if n.Healthy {
			delete(rc.downSince, n.Node)
		} else if _, ok := rc.downSince[n.Node]; !ok {
			rc.downSince[n.Node] = now
			rc.log.Warn("node is down", "node", n.Node, "why", n.Why, "replaced_after", rc.cfg.Grace)
		}
	}
	var errs []error
	if err := rc.CleanStaleCreates(ctx, lease, vols); err != nil {
		errs = append(errs, err)
	}
	if err := rc.SweepTombstones(ctx, lease, NodeMap(nodes)); err != nil {
		errs = append(errs, err)
	}
	if err := rc.rereplicate(ctx, lease, nodes, vols, now); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
