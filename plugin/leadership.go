package plugin

import (
	"context"
	"time"

	"github.com/saddlebag/saddlebag/internal/ctxutil"
	"github.com/saddlebag/saddlebag/plugin/reconcile"
)

// Run competes for the controller leadership lock until ctx ends. While
// it holds the lock this instance is active: it answers mutating RPCs and
// runs the background passes (plugin/reconcile) every ScanEvery; the lock's value
// publishes cfg.ForwardAddr to the standbys. When the lock is lost it
// becomes a standby at once (mutating RPCs are forwarded to whoever holds
// the lock next) and competes again. On return the lock is released.
func (c *Controller) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		lease, err := c.cfg.Agent.AcquireLeadership(ctx, c.cfg.ForwardAddr)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			c.log.Warn("cannot take the leadership lock; retrying", "error", err)
			_ = ctxutil.Sleep(ctx, time.Second)
			continue
		}
		c.mu.Lock()
		c.lease = lease
		c.mu.Unlock()
		c.log.Info("active controller: holding the leadership lock", "epoch", lease.Epoch())
		c.driveWhileActive(ctx, lease.Lost())
		c.mu.Lock()
		c.lease = nil
		c.mu.Unlock()
		if ctx.Err() != nil {
			if err := lease.Release(context.WithoutCancel(ctx)); err != nil {
				c.log.Warn("release leadership", "error", err)
			}
			break
		}
		c.log.Error("leadership lost: standby", "error", lease.Err())
	}
	return nil
}

// reconciler returns the background passes of one tenure as the active
// controller (plugin/reconcile), sharing the RPCs' volume locks.
func (c *Controller) reconciler() *reconcile.Reconciler {
	r, err := reconcile.New(reconcile.Config{Client: c.cfg.Client, Dial: c.cfg.Dial, ReplicaTimeout: c.cfg.ReplicaTimeout,
		Grace: c.cfg.Grace, CreateTimeout: c.cfg.CreateTimeout, TryLock: c.locks.TryLock, Log: c.log.Named("reconcile"), Now: c.cfg.Now})
	if err != nil {
		panic(err) // NewController set every field reconcile needs
	}
	return r
}

// driveWhileActive runs the background passes (plugin/reconcile) every
// ScanEvery until lost closes or ctx ends.
func (c *Controller) driveWhileActive(ctx context.Context, lost <-chan struct{}) {
	r := c.reconciler()
	t := time.NewTicker(c.cfg.ScanEvery)
	defer t.Stop()
	for {
		if lease, err := c.leadership(); err == nil {
			if err := r.Pass(ctx, lease); err != nil && ctx.Err() == nil {
				c.log.Warn("background pass failed; retrying next pass", "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-lost:
			return
		case <-t.C:
		}
	}
}
