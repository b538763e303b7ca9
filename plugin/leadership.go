package plugin

import (
	"context"
	"time"
)

// Run competes for the controller leadership lock until ctx ends. While
// it holds the lock this instance is active: it answers mutating RPCs and
// runs the re-replication driver every ScanEvery; the lock's value
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
			_ = sleep(ctx, time.Second)
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

// driveWhileActive runs the re-replication driver until lost closes or
// ctx ends.
func (c *Controller) driveWhileActive(ctx context.Context, lost <-chan struct{}) {
	d := &driver{c: c, downSince: map[string]time.Time{}}
	t := time.NewTicker(c.cfg.ScanEvery)
	defer t.Stop()
	for {
		if lease, err := c.leadership(); err == nil {
			if err := d.step(ctx, lease); err != nil && ctx.Err() == nil {
				c.log.Warn("re-replication pass failed; retrying next pass", "error", err)
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

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
