package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/internal/backoff"
	"github.com/saddlebag/saddlebag/internal/ctxutil"
)

// IOGate is the part of a volume's primary engine that a lease drives
// (replication.Engine satisfies it).
//
// Contract: Hold, Release and Fence may be called from any goroutine, any
// number of times and in any order, and return without waiting for I/O.
// Hold stops completing I/O: requests keep running but none completes
// until Release (they are held, not failed). Release lifts a Hold. Fence
// makes every request, held ones included, fail for good; nothing the
// engine completes afterwards may depend on the lease.
type IOGate interface {
	Hold()
	Release()
	Fence(cause error)
}

// Lease is a held Consul lock: a volume's primary lease or the
// controller's leadership. Its Epoch is the lock key's LockIndex at
// acquisition, which grows with every acquisition by anyone.
//
// It is NOT safe to assume the lease is held until Release: it can be lost
// at any moment, and Lost is closed at once when it is noticed. While held
// it is confirmed every ConfirmEvery with a consistent read that shows the
// key still locked by this session at this epoch. If no confirmation that
// was sent within the last HoldAfter (< lock-delay) has arrived, the
// guarded gate is held; a confirmation releases it; finding the key
// unlocked, relocked or gone fences it and loses the lease. Because a
// confirmation proves the session alive when it was sent, and nobody can
// take the lock sooner than lock-delay after the session dies, a holder
// that is cut off from Consul stops completing I/O before anyone else can
// become primary.
//
// All methods are safe for concurrent use.
type Lease struct {
	c           *Client
	key, volume string
	session     string
	epoch       uint64 // floor + lockIndex
	lockIndex   uint64
	floor       uint64 // the epoch floor read at acquisition (primary leases)
	modifyIndex uint64
	timing      leaseTiming
	log         hclog.Logger
	onEnd       func(*Lease)

	cancel context.CancelFunc
	done   chan struct{} // monitor finished
	lost   chan struct{}

	mu        sync.Mutex
	err       error
	gate      IOGate
	held      bool
	holds     int
	confirmed time.Time // send time of the newest confirmation
	acquired  time.Time
}

// leaseTiming bounds a lease's confirmation.
type leaseTiming struct {
	holdAfter, confirmEvery, retryEvery time.Duration
}

// timingFor derives the confirmation bounds from a lock-delay: confirm five
// times per half lock-delay, hold after half of it without confirmation.
func timingFor(lockDelay time.Duration) leaseTiming {
	t := leaseTiming{holdAfter: lockDelay / 2}
	t.confirmEvery = t.holdAfter / 5
	t.retryEvery = min(max(lockDelay/50, 20*time.Millisecond), 250*time.Millisecond)
	return t
}

// LeaseHoldAfter is how long a holder may go without confirming its lease
// before it holds I/O, for a given lock-delay.
func LeaseHoldAfter(lockDelay time.Duration) time.Duration { return timingFor(lockDelay).holdAfter }

// Key returns the lock key.
func (l *Lease) Key() string { return l.key }

// Volume returns the volume of a primary lease ("" for leadership).
func (l *Lease) Volume() string { return l.volume }

// Epoch returns the lease's epoch: the key's LockIndex when this lease
// acquired it, plus the volume's epoch floor (normally 0; see RaiseEpoch).
func (l *Lease) Epoch() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.epoch
}

// maxEpochFloor refuses floors that could overflow an epoch: no honest
// history gets near it (it would take 2^62 lock acquisitions).
const maxEpochFloor = 1 << 62

// RaiseEpoch makes this primary lease's epoch greater than above, by
// raising the volume's epoch floor in Consul in one transaction that
// checks this lease still holds the lock. It is for a new primary whose
// replicas have promised an epoch at or above its own although it holds
// the lock: Consul's lock index restarted (Consul lost its data and the
// floor with it). Holding the lock proves no other primary is current, so
// starting above every promise fences whatever primary made them. Later
// primaries read the floor at acquisition, so epochs keep growing.
func (l *Lease) RaiseEpoch(ctx context.Context, above uint64) error {
	if l.volume == "" {
		return fmt.Errorf("%w: %s is not a primary lease", ErrInvalid, l.key)
	}
	if err := l.Err(); err != nil {
		return err
	}
	floor := above + 1
	if above >= maxEpochFloor {
		return fmt.Errorf("%w: volume %s: a replica promised epoch %d, beyond any epoch Saddlebag issues; refusing to follow it", ErrInvalid, l.volume, above)
	}
	l.mu.Lock()
	if floor <= l.floor {
		l.mu.Unlock()
		return nil
	}
	l.mu.Unlock()
	key := l.c.keys.EpochFloor(l.volume)
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: l.key, Session: l.session}},
		{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: l.key, Index: l.modifyIndex}},
		{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: []byte(strconv.FormatUint(floor, 10))}},
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	ok, resp, _, err := l.c.api.Txn().Txn(ops, qopts(ctx))
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	if !ok {
		why := "transaction refused"
		if len(resp.Errors) > 0 {
			why = resp.Errors[0].What
		}
		return &LeaseLostError{Key: l.key, Epoch: l.Epoch(), Reason: "raising the epoch floor refused: " + why}
	}
	l.mu.Lock()
	l.floor, l.epoch = floor, floor+l.lockIndex
	l.mu.Unlock()
	l.log.Warn("raised the volume's epoch floor above a replica's promise (Consul's lock index restarted)",
		"promised", above, "floor", floor, "epoch", floor+l.lockIndex)
	return nil
}

// readEpochFloor reads a volume's epoch floor (0 when absent).
func (c *Client) readEpochFloor(ctx context.Context, volume string) (uint64, error) {
	key := c.keys.EpochFloor(volume)
	pair, _, err := c.api.KV().Get(key, qopts(ctx))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", key, err)
	}
	if pair == nil {
		return 0, nil
	}
	floor, err := strconv.ParseUint(string(pair.Value), 10, 64)
	if err != nil || floor >= maxEpochFloor {
		return 0, fmt.Errorf("%s holds %q: not an epoch floor", key, pair.Value)
	}
	return floor, nil
}

// AcquiredAt returns when the lock was found held after acquiring it.
func (l *Lease) AcquiredAt() time.Time { return l.acquired }

// Session returns the session holding the lock.
func (l *Lease) Session() string { return l.session }

// Lost is closed once the lease is lost or released.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Err returns nil while the lease is held, then a *LeaseLostError saying
// why it ended.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Held reports whether the lease currently holds its gate's I/O, and how
// many times it has done so.
func (l *Lease) Held() (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held, l.holds
}

// Guard makes the lease drive gate: held while the lease is unconfirmed,
// fenced when it is lost or released (at once if that already happened).
// A later Guard replaces the gate.
func (l *Lease) Guard(gate IOGate) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gate = gate
	switch {
	case l.err != nil:
		gate.Fence(l.err)
	case l.held:
		gate.Hold()
	}
}

// AcquirePrimary blocks until this agent holds volume's primary lease, or
// ctx ends. The returned lease's epoch is the key's LockIndex.
func (a *Agent) AcquirePrimary(ctx context.Context, volume string) (*Lease, error) {
	if err := ValidateName("volume id", volume); err != nil {
		return nil, err
	}
	return a.acquire(ctx, a.c.keys.Primary(volume), volume, []byte(a.cfg.Node))
}

// AcquireLeadership blocks until this agent holds the controller
// leadership lock, or ctx ends. The lock key's value is a LeaderRecord
// naming this agent's node and forwardAddr, the address where this
// controller serves the calls standbys forward to it ("" for none); it is
// written with the acquisition itself, so it is there exactly while the
// lock is held (ReadLeader).
func (a *Agent) AcquireLeadership(ctx context.Context, forwardAddr string) (*Lease, error) {
	v, err := json.Marshal(LeaderRecord{Node: a.cfg.Node, ForwardAddr: forwardAddr})
	if err != nil {
		return nil, fmt.Errorf("encode leader record: %w", err)
	}
	return a.acquire(ctx, a.c.keys.Leader(), "", v)
}

// acquire loops until it holds key: it tries, and when the key is locked
// by another session waits (a bounded blocking query) for it to change;
// when it is free but refused (lock-delay after an invalidated session) it
// retries every retryEvery.
func (a *Agent) acquire(ctx context.Context, key, volume string, value []byte) (*Lease, error) {
	timing := timingFor(a.cfg.LockDelay)
	log := a.log.Named("lease").With("key", key)
	if volume != "" {
		log = log.With("volume_id", volume)
	}
	kv := a.c.api.KV()
	for attempt := 1; ; attempt++ {
		sid, err := a.waitSession(ctx)
		if err != nil {
			return nil, err
		}
		rctx, cancel := bounded(ctx)
		ok, _, err := kv.Acquire(&api.KVPair{Key: key, Value: value, Session: sid}, wopts(rctx))
		if err == nil && ok {
			sent := time.Now()
			var pair *api.KVPair
			pair, _, err = kv.Get(key, qopts(rctx))
			var floor uint64
			if err == nil && pair != nil && pair.Session == sid && volume != "" {
				floor, err = a.c.readEpochFloor(rctx, volume)
			}
			cancel()
			if err == nil && pair != nil && pair.Session == sid {
				return a.startLease(key, volume, sid, pair, floor, sent, timing, log), nil
			}
			if err == nil {
				log.Warn("lock lost right after acquiring it; retrying")
			}
		} else if err == nil {
			var pair *api.KVPair
			var meta *api.QueryMeta
			pair, meta, err = kv.Get(key, qopts(rctx))
			cancel()
			if err == nil && pair != nil && pair.Session != "" {
				if attempt == 1 {
					log.Info("lock held by another session; waiting", "holder", string(pair.Value), "lock_index", pair.LockIndex)
				}
				wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
				q := (&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: time.Minute}).WithContext(wctx)
				_, _, err = kv.Get(key, q)
				wcancel()
				if err == nil {
					continue
				}
			} else if err == nil {
				// Free but refused: the previous holder's lock-delay.
				if err := ctxutil.Sleep(ctx, timing.retryEvery); err != nil {
					return nil, err
				}
				continue
			}
		} else {
			cancel()
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log.Debug("acquire attempt failed; retrying", "error", err)
		if err := ctxutil.Sleep(ctx, backoff.Delay(timing.retryEvery, 2*time.Second, attempt-1)); err != nil {
			return nil, err
		}
	}
}

func (a *Agent) startLease(key, volume, sid string, pair *api.KVPair, floor uint64, confirmed time.Time, timing leaseTiming, log hclog.Logger) *Lease {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Lease{
		c: a.c, key: key, volume: volume, session: sid,
		epoch: floor + pair.LockIndex, lockIndex: pair.LockIndex, floor: floor, modifyIndex: pair.ModifyIndex,
		timing: timing, log: log.With("lock_index", pair.LockIndex),
		onEnd: a.removeLease, cancel: cancel,
		done: make(chan struct{}), lost: make(chan struct{}),
		confirmed: confirmed, acquired: time.Now(),
	}
	a.addLease(l)
	l.log.Info("lease acquired", "session", sid, "hold_after", timing.holdAfter, "lock_delay", a.cfg.LockDelay)
	go func() {
		defer close(l.done)
		defer cancel()
		l.monitor(ctx)
	}()
	return l
}

// confirmation is the result of one consistent read of the lock key.
type confirmation struct {
	sent time.Time
	pair *api.KVPair
	err  error
}

// monitor confirms the lease until it is lost or released.
func (l *Lease) monitor(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	results := make(chan confirmation)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { l.confirmLoop(ctx, results) })

	l.mu.Lock()
	deadline := l.confirmed.Add(l.timing.holdAfter)
	l.mu.Unlock()
	hold := time.NewTimer(time.Until(deadline))
	defer hold.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hold.C:
			l.setHeld(true)
		case r := <-results:
			if r.err != nil {
				l.log.Debug("lease confirmation failed", "error", r.err)
				continue
			}
			if reason := l.check(r.pair); reason != "" {
				l.end(&LeaseLostError{Key: l.key, Epoch: l.Epoch(), Reason: reason})
				return
			}
			l.mu.Lock()
			if r.sent.After(l.confirmed) {
				l.confirmed = r.sent
			}
			deadline = l.confirmed.Add(l.timing.holdAfter)
			l.mu.Unlock()
			l.setHeld(false)
			hold.Reset(time.Until(deadline))
		}
	}
}

// confirmLoop reads the key every confirmEvery, each read bounded by
// holdAfter, and hands the results to monitor.
func (l *Lease) confirmLoop(ctx context.Context, results chan<- confirmation) {
	tick := time.NewTicker(l.timing.confirmEvery)
	defer tick.Stop()
	kv := l.c.api.KV()
	for {
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, l.timing.holdAfter)
		pair, _, err := kv.Get(l.key, qopts(rctx))
		cancel()
		select {
		case results <- confirmation{sent: sent, pair: pair, err: err}:
		case <-ctx.Done():
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

// check returns why pair shows the lease lost, or "".
func (l *Lease) check(pair *api.KVPair) string {
	switch {
	case pair == nil:
		return "lock key is gone (consul lost its data or someone deleted it)"
	case pair.Session == "":
		return "lock released: the session was invalidated"
	case pair.Session != l.session:
		return fmt.Sprintf("lock taken by session %s at epoch %d", pair.Session, pair.LockIndex)
	case pair.LockIndex != l.lockIndex || pair.ModifyIndex != l.modifyIndex:
		return fmt.Sprintf("lock re-acquired (lock index %d, modify index %d)", pair.LockIndex, pair.ModifyIndex)
	}
	return ""
}

func (l *Lease) setHeld(held bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil || l.held == held {
		return
	}
	l.held = held
	if held {
		l.holds++
		l.log.Warn("cannot confirm lease within the hold bound; holding I/O", "last_confirmed", l.confirmed, "hold_after", l.timing.holdAfter)
		if l.gate != nil {
			l.gate.Hold()
		}
		return
	}
	l.log.Info("lease confirmed again; releasing held I/O")
	if l.gate != nil {
		l.gate.Release()
	}
}

// end records why the lease ended, fences the gate and closes Lost. Only
// the first call counts; it reports whether it was the first.
func (l *Lease) end(err *LeaseLostError) bool {
	l.mu.Lock()
	if l.err != nil {
		l.mu.Unlock()
		return false
	}
	l.err = err
	if l.gate != nil {
		l.gate.Fence(err)
	}
	close(l.lost)
	l.mu.Unlock()
	if err.Released {
		l.log.Info("lease released")
	} else {
		l.log.Error("lease lost; I/O fenced", "reason", err.Reason)
	}
	l.onEnd(l)
	return true
}

// Release ends the lease on clean demotion: it fences the gate (flush and
// close the engine first), stops confirming, and unlocks the key
// explicitly, so the next holder is not kept waiting for lock-delay.
// Releasing a lease that is already lost or released does nothing.
func (l *Lease) Release(ctx context.Context) error {
	first := l.end(&LeaseLostError{Key: l.key, Epoch: l.Epoch(), Released: true, Reason: "released by its holder"})
	l.cancel()
	<-l.done
	if !first {
		return nil
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	ok, _, err := l.c.api.KV().Release(&api.KVPair{Key: l.key, Session: l.session}, wopts(ctx))
	if err != nil {
		return fmt.Errorf("release %s: %w", l.key, err)
	}
	if !ok {
		return fmt.Errorf("release %s: %w", l.key, errors.New("consul refused the release (not held by this session)"))
	}
	return nil
}
