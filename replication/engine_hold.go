package replication

// Deliberate holds (issue #10, scenario 8). The engine makes requests wait,
// on purpose and for as long as it takes, in three places:
//
//   - Hold: the lease layer cannot confirm the primary lease (Consul
//     unreachable), so nothing may complete that a new primary could miss;
//   - waitMinInSync: fewer replicas are in sync than min_in_sync, so
//     writes wait for resync to bring one back;
//   - the InSyncHook: a change of the in-sync set must be recorded (a
//     Consul write) before any write depending on it completes.
//
// A frontend's watchdog must tell those waits from a hung engine: Holding
// reports them, and the FUSE watchdog does not abort the connection while
// it is true.

import (
	"context"
	"fmt"
	"sync/atomic"
)

// holdCounters counts the requests waiting in each deliberate hold.
type holdCounters struct {
	minInSync atomic.Int64 // requests in waitMinInSync below min_in_sync
	hook      atomic.Int64 // InSyncHook calls in progress
}

// Holding reports whether the engine is deliberately holding I/O, and why:
// it is held (Hold) until the primary lease is confirmed, or writes wait
// for min_in_sync replicas, or an in-sync set change is being recorded
// through the hook. Requests that wait then are not hung; they complete
// (or fail) when the hold ends. A fenced engine holds nothing: every
// request fails at once. Holding implements HoldingDevice: it takes no lock
// and never blocks, so that a watchdog can ask an engine that is hung.
func (e *Engine) Holding() (bool, string) {
	if e.fenced.Load() {
		return false, ""
	}
	if e.hold.Load() != nil {
		return true, "I/O held until the primary lease is confirmed"
	}
	if n := e.holds.minInSync.Load(); n > 0 {
		return true, fmt.Sprintf("%d write(s) wait for min_in_sync=%d replicas to be in sync", n, e.cfg.MinInSync)
	}
	if e.holds.hook.Load() > 0 {
		return true, "recording an in-sync set change through the coordination layer"
	}
	if e.holding.Load() > 0 {
		return true, "waiting to record the in-sync set (coordination layer unreachable) or for the last in-sync replica to come back"
	}
	return false, ""
}

// setInSync calls the hook, counting the call as a deliberate hold: every
// request that depends on the change waits for it.
func (e *Engine) setInSync(ctx context.Context, gen uint64, addrs []string) error {
	e.holds.hook.Add(1)
	defer e.holds.hook.Add(-1)
	return e.cfg.Hook.SetInSync(ctx, e.cfg.Epoch, gen, addrs)
}

var _ HoldingDevice = (*Engine)(nil)

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
