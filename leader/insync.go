package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
)

// InSyncRecord is <prefix>volumes/<vol>/insync: the replicas that hold
// every write acknowledged by the primary of Epoch. Only a replica named
// here may be the source of truth for a new primary.
type InSyncRecord struct {
	Epoch uint64 `json:"epoch"`
	// Gen is the set's generation (replication/wire.Membership): it grows by
	// one with every change, and each member holds it too, so a primary
	// can tell a lost or rolled-back record from a current one.
	Gen      uint64    `json:"gen"`
	Replicas []string  `json:"replicas"`
	Node     string    `json:"node,omitempty"` // the primary that wrote it
	Updated  time.Time `json:"updated"`
}

// Promotable reports whether replica may serve as the source of truth for
// a new primary: it is named in the record.
func (r InSyncRecord) Promotable(replica string) bool { return slices.Contains(r.Replicas, replica) }

// ReadInSync returns the volume's in-sync record and its modify index (a
// consistent read), or ErrNotFound when the volume has none yet.
func (c *Client) ReadInSync(ctx context.Context, volume string) (InSyncRecord, uint64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	var rec InSyncRecord
	key := c.keys.InSync(volume)
	pair, _, err := c.api.KV().Get(key, qopts(ctx))
	if err != nil {
		return rec, 0, fmt.Errorf("read %s: %w", key, err)
	}
	if pair == nil {
		return rec, 0, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	if err := json.Unmarshal(pair.Value, &rec); err != nil {
		return rec, 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return rec, pair.ModifyIndex, nil
}

// RecordedInSync returns the in-sync record for a new primary's engine
// (replication.EngineConfig.Recorded): nil when the volume has none (a
// new volume, or Consul lost it: the replicas' own history decides then).
func (c *Client) RecordedInSync(ctx context.Context, volume string) (*InSyncRecord, error) {
	rec, _, err := c.ReadInSync(ctx, volume)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &rec, nil
}

// InitInSync writes a new volume's first in-sync record, generation 0 with
// every replica, unless the volume has one already (check-and-set on
// index 0: idempotent, and never over a primary's record). With it, the
// first primary can start with a replica's node down; without it, it
// would have to reach them all to know the volume is new.
func (c *Client) InitInSync(ctx context.Context, volume string, replicas []string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	set := slices.Clone(replicas)
	slices.Sort(set)
	b, err := json.Marshal(InSyncRecord{Replicas: set, Updated: time.Now().UTC()})
	if err != nil {
		return fmt.Errorf("encode in-sync record: %w", err)
	}
	key := c.keys.InSync(volume)
	if _, _, err := c.api.KV().CAS(&api.KVPair{Key: key, Value: b, ModifyIndex: 0}, wopts(ctx)); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

// InSyncWriter writes a volume's in-sync record under its primary lease.
// It is the data plane's InSyncHook (replication.InSyncHook). Every write
// is one Consul transaction that checks the lease's session still holds
// the primary lock at the lease's epoch and compares-and-sets the record,
// so a replaced primary can never overwrite its successor's record.
//
// Safe for concurrent use; concurrent writers are serialised by Consul's
// check-and-set, and Update retries them so no update is lost.
type InSyncWriter struct {
	l    *Lease
	node string
}

// InSyncWriter returns the writer for a primary lease's volume.
func (l *Lease) InSyncWriter(node string) *InSyncWriter { return &InSyncWriter{l: l, node: node} }

// maxCASAttempts bounds Update's retries against concurrent writers.
const maxCASAttempts = 32

// CompareAndSwap writes rec if the record's modify index is still index
// (0: the record must not exist) and the lease still holds the lock. It
// returns the new modify index; a *ConflictError when the record changed;
// a *LeaseLostError when the lease no longer holds the lock.
func (w *InSyncWriter) CompareAndSwap(ctx context.Context, rec InSyncRecord, index uint64) (uint64, error) {
	l := w.l
	if l.volume == "" {
		return 0, fmt.Errorf("%w: %s is not a primary lease", ErrInvalid, l.key)
	}
	if err := l.Err(); err != nil {
		return 0, err
	}
	if rec.Epoch != l.Epoch() {
		return 0, &ConflictError{Key: l.c.keys.InSync(l.volume), Index: index, Epoch: rec.Epoch, CurrentEpoch: l.Epoch(),
			Reason: "record epoch differs from the lease epoch"}
	}
	rec.Node, rec.Updated = w.node, time.Now().UTC()
	b, err := json.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("encode in-sync record: %w", err)
	}
	key := l.c.keys.InSync(l.volume)
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: l.key, Session: l.session}},
		{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: l.key, Index: l.modifyIndex}},
		{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: key, Value: b, Index: index}},
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	ok, resp, _, err := l.c.api.Txn().Txn(ops, qopts(ctx))
	if err != nil {
		return 0, fmt.Errorf("write %s: %w", key, err)
	}
	if ok {
		for _, r := range resp.Results {
			if r.KV != nil && r.KV.Key == key {
				return r.KV.ModifyIndex, nil
			}
		}
		return 0, fmt.Errorf("write %s: transaction returned no result for the key", key)
	}
	for _, e := range resp.Errors {
		if e.OpIndex < 2 {
			return 0, &LeaseLostError{Key: l.key, Epoch: l.Epoch(), Reason: "in-sync write refused: " + e.What}
		}
	}
	conflict := &ConflictError{Key: key, Index: index, Epoch: rec.Epoch, Reason: "record changed since it was read"}
	if cur, curIndex, err := l.c.ReadInSync(ctx, l.volume); err == nil {
		conflict.Current, conflict.CurrentEpoch = curIndex, cur.Epoch
	} else if !errors.Is(err, ErrNotFound) {
		return 0, errors.Join(conflict, err)
	}
	return 0, conflict
}

// Update reads the record, lets fn change it and writes it back with
// CompareAndSwap, retrying (a bounded number of times) when another writer
// got in first. fn gets the current record (zero with this lease's epoch
// when there is none) and must not block. A record from a newer epoch is
// a *ConflictError at once: this writer is stale.
func (w *InSyncWriter) Update(ctx context.Context, fn func(InSyncRecord) InSyncRecord) (InSyncRecord, error) {
	l := w.l
	for range maxCASAttempts {
		cur, index, err := l.c.ReadInSync(ctx, l.volume)
		if errors.Is(err, ErrNotFound) {
			cur, index, err = InSyncRecord{}, 0, nil
		}
		if err != nil {
			return cur, err
		}
		if cur.Epoch > l.Epoch() {
			return cur, &ConflictError{Key: l.c.keys.InSync(l.volume), Index: index, Current: index,
				Epoch: l.Epoch(), CurrentEpoch: cur.Epoch, Reason: "recorded by a newer primary"}
		}
		next := fn(cur)
		next.Epoch = l.Epoch()
		_, err = w.CompareAndSwap(ctx, next, index)
		var conflict *ConflictError
		if errors.As(err, &conflict) && conflict.CurrentEpoch <= l.Epoch() {
			continue // a concurrent writer of this epoch: read again
		}
		return next, err
	}
	return InSyncRecord{}, &ConflictError{Key: l.c.keys.InSync(l.volume), Epoch: l.Epoch(),
		Reason: fmt.Sprintf("still conflicting after %d attempts", maxCASAttempts)}
}

// SetInSync records inSync as the volume's in-sync set of generation gen
// at epoch. It implements replication.InSyncHook: the engine completes no
// write that depends on the change until this returns nil.
func (w *InSyncWriter) SetInSync(ctx context.Context, epoch, gen uint64, inSync []string) error {
	if epoch != w.l.Epoch() {
		return &ConflictError{Key: w.l.c.keys.InSync(w.l.volume), Epoch: epoch, CurrentEpoch: w.l.Epoch(),
			Reason: "engine epoch differs from the lease epoch"}
	}
	set := slices.Clone(inSync)
	slices.Sort(set)
	_, err := w.Update(ctx, func(InSyncRecord) InSyncRecord { return InSyncRecord{Gen: gen, Replicas: set} })
	if err != nil {
		return err
	}
	w.l.log.Info("recorded in-sync set", "in_sync", set, "generation", gen)
	return nil
}
