package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/saddlebag/saddlebag/internal/volkey"
)

// VolumeSpec is what the user asked for.
type VolumeSpec struct {
	SizeBytes  int64             `json:"size_bytes"`
	Replicas   int               `json:"replicas"`
	FSType     string            `json:"fs_type,omitempty"`
	Parameters map[string]string `json:"parameters,omitempty"`
}

// ReplicaRecord is one replica of a volume as the controller placed it.
type ReplicaRecord struct {
	Node  string       `json:"node"`
	Addr  string       `json:"addr"`
	State ReplicaState `json:"state"`
}

// ReplicaState is where a replica stands in its volume record.
type ReplicaState string

// Replica states in a volume record. A placed replica is ReplicaReady;
// re-replication writes a replacement ReplicaAdding and the replica it
// replaces ReplicaLost, then the replacement ReplicaReady and drops the
// lost one once the replacement is in sync.
const (
	// ReplicaReady replicas are part of the volume.
	ReplicaReady ReplicaState = "ready"
	// ReplicaAdding replicas were placed by re-replication and are being
	// filled with a full copy by the primary.
	ReplicaAdding ReplicaState = "adding"
	// ReplicaLost replicas are on a node down longer than the grace; they
	// are dropped once their replacement is in sync.
	ReplicaLost ReplicaState = "lost"
)

// VolumeState is where a volume stands in its lifecycle.
type VolumeState string

// Volume record states: a record is written VolumeCreating with its
// placement, the replicas are made on their nodes, and VolumeReady is the
// "completed" marker written last; VolumeDeleting is written before the
// replicas are removed, and the record itself last.
const (
	VolumeCreating VolumeState = "creating"
	VolumeReady    VolumeState = "ready"
	VolumeDeleting VolumeState = "deleting"
)

// VolumeRecord is <prefix>volumes/<vol>, written by the controller with
// check-and-set.
type VolumeRecord struct {
	ID string `json:"id"`
	// Name is the name the volume was created with (CSI CreateVolume).
	Name     string          `json:"name,omitempty"`
	State    VolumeState     `json:"state,omitempty"`
	Spec     VolumeSpec      `json:"spec"`
	Replicas []ReplicaRecord `json:"replicas"`
	// Requisite is the topology the volume's replicas must stay within
	// (each entry a set of segments; a node qualifies if it matches all
	// segments of any entry); empty means anywhere.
	Requisite []map[string]string `json:"requisite,omitempty"`
	// Published lists the nodes the volume is published to
	// (ControllerPublishVolume).
	Published []string `json:"published,omitempty"`
	// Fenced maps a node to the primary epoch the controller fenced it at
	// (ControllerUnpublishVolume): a primary on that node at that epoch
	// must stop serving and release its lease.
	Fenced map[string]uint64 `json:"fenced,omitempty"`
	// Encryption is an encrypted volume's key record: its data key sealed
	// under a key derived from the volume's passphrase (salt, argon2id
	// parameters, nonce, sealed key; nothing secret). nil for a volume
	// that is not encrypted.
	Encryption *volkey.Record `json:"encryption,omitempty"`
	Created    time.Time      `json:"created"`
	Updated    time.Time      `json:"updated"`
}

// PrimaryHolder says who holds a volume's primary lock.
type PrimaryHolder struct {
	Node    string // the holder's node name ("" when unlocked)
	Session string
	Epoch   uint64 // the holder's epoch: the key's LockIndex plus the epoch floor
}

// ReadPrimary returns the volume's primary lock holder (zero when the lock
// is free or absent), from a consistent read.
func (c *Client) ReadPrimary(ctx context.Context, id string) (PrimaryHolder, error) {
	if err := ValidateName("volume id", id); err != nil {
		return PrimaryHolder{}, err
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	key := c.keys.Primary(id)
	pair, _, err := c.api.KV().Get(key, qopts(ctx))
	if err != nil {
		return PrimaryHolder{}, fmt.Errorf("read %s: %w", key, err)
	}
	if pair == nil || pair.Session == "" {
		return PrimaryHolder{}, nil
	}
	floor, err := c.readEpochFloor(ctx, id)
	if err != nil {
		return PrimaryHolder{}, err
	}
	return PrimaryHolder{Node: string(pair.Value), Session: pair.Session, Epoch: floor + pair.LockIndex}, nil
}

// WatchVolume blocks until the volume record's modify index differs from
// index or wait passes (a Consul blocking query), and returns the record,
// its index, and ErrNotFound when it does not exist.
func (c *Client) WatchVolume(ctx context.Context, id string, index uint64, wait time.Duration) (VolumeRecord, uint64, error) {
	var rec VolumeRecord
	if err := ValidateName("volume id", id); err != nil {
		return rec, index, err
	}
	key := c.keys.Volume(id)
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
	pair, meta, err := c.api.KV().Get(key, q)
	if err != nil {
		return rec, index, fmt.Errorf("watch %s: %w", key, err)
	}
	if pair == nil {
		return rec, meta.LastIndex, fmt.Errorf("volume %s: %w", id, ErrNotFound)
	}
	if err := json.Unmarshal(pair.Value, &rec); err != nil {
		return rec, meta.LastIndex, fmt.Errorf("decode %s: %w", key, err)
	}
	return rec, pair.ModifyIndex, nil
}

// GetVolume returns a volume record and its modify index (consistent
// read), or ErrNotFound.
func (c *Client) GetVolume(ctx context.Context, id string) (VolumeRecord, uint64, error) {
	var rec VolumeRecord
	if err := ValidateName("volume id", id); err != nil {
		return rec, 0, err
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	key := c.keys.Volume(id)
	pair, _, err := c.api.KV().Get(key, qopts(ctx))
	if err != nil {
		return rec, 0, fmt.Errorf("read %s: %w", key, err)
	}
	if pair == nil {
		return rec, 0, fmt.Errorf("volume %s: %w", id, ErrNotFound)
	}
	if err := json.Unmarshal(pair.Value, &rec); err != nil {
		return rec, 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return rec, pair.ModifyIndex, nil
}

// ListVolumes returns every volume record.
func (c *Client) ListVolumes(ctx context.Context) ([]VolumeRecord, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	pairs, _, err := c.api.KV().List(c.keys.Volumes(), qopts(ctx))
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	var out []VolumeRecord
	for _, p := range pairs {
		if strings.Contains(strings.TrimPrefix(p.Key, c.keys.Volumes()), "/") {
			continue // a volume's primary lock or in-sync record
		}
		if ValidateName("volume id", strings.TrimPrefix(p.Key, c.keys.Volumes())) != nil {
			continue // not a key this layout makes (written by hand, or quarantined)
		}
		var rec VolumeRecord
		if err := json.Unmarshal(p.Value, &rec); err != nil {
			return nil, fmt.Errorf("decode %s: %w", p.Key, err)
		}
		out = append(out, rec)
	}
	return out, nil
}

// PutVolume writes rec if the record's modify index is still index (0:
// create, the record must not exist) and, when leadership is non-nil, the
// controller still holds it. It returns the new modify index; a
// *ConflictError when the record changed (or already exists), a
// *LeaseLostError when leadership is gone. Created is kept from the caller
// (set on create when zero); Updated is set now.
func (c *Client) PutVolume(ctx context.Context, rec VolumeRecord, index uint64, leadership *Lease) (uint64, error) {
	if err := ValidateName("volume id", rec.ID); err != nil {
		return 0, err
	}
	now := time.Now().UTC()
	if rec.Created.IsZero() {
		rec.Created = now
	}
	rec.Updated = now
	b, err := json.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("encode volume record: %w", err)
	}
	key := c.keys.Volume(rec.ID)
	return c.casTxn(ctx, key, index, leadership, &api.KVTxnOp{Verb: api.KVCAS, Key: key, Value: b, Index: index})
}

// DeleteVolume deletes the record if its modify index is still index,
// together with every key under it (the in-sync record and the primary
// lock key), under leadership (when non-nil). Deleting an absent record with index 0 succeeds.
func (c *Client) DeleteVolume(ctx context.Context, id string, index uint64, leadership *Lease) error {
	if err := ValidateName("volume id", id); err != nil {
		return err
	}
	key := c.keys.Volume(id)
	if index == 0 {
		_, _, err := c.GetVolume(ctx, id)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err == nil {
			return &ConflictError{Key: key, Reason: "delete of an existing record needs its index"}
		}
		return err
	}
	_, err := c.casTxn(ctx, key, index, leadership,
		&api.KVTxnOp{Verb: api.KVDeleteCAS, Key: key, Index: index},
		&api.KVTxnOp{Verb: api.KVDeleteTree, Key: key + "/"})
	return err
}

// casTxn runs ops (the first being the check-and-set on key) in one
// transaction, preceded by a leadership check when leadership is non-nil.
func (c *Client) casTxn(ctx context.Context, key string, index uint64, leadership *Lease, ops ...*api.KVTxnOp) (uint64, error) {
	var txn api.TxnOps
	checks := 0
	if leadership != nil {
		if err := leadership.Err(); err != nil {
			return 0, err
		}
		txn = append(txn,
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: leadership.key, Session: leadership.session}},
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: leadership.key, Index: leadership.modifyIndex}})
		checks = 2
	}
	for _, op := range ops {
		txn = append(txn, &api.TxnOp{KV: op})
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	ok, resp, _, err := c.api.Txn().Txn(txn, qopts(ctx))
	if err != nil {
		return 0, fmt.Errorf("write %s: %w", key, err)
	}
	if !ok {
		for _, e := range resp.Errors {
			if e.OpIndex < checks {
				return 0, &LeaseLostError{Key: leadership.key, Epoch: leadership.epoch, Reason: "write refused: " + e.What}
			}
		}
		conflict := &ConflictError{Key: key, Index: index, Reason: "record changed since it was read"}
		if pair, _, err := c.api.KV().Get(key, qopts(ctx)); err == nil && pair != nil {
			conflict.Current = pair.ModifyIndex
		}
		return 0, conflict
	}
	for _, r := range resp.Results {
		if r.KV != nil && r.KV.Key == key {
			return r.KV.ModifyIndex, nil
		}
	}
	return 0, nil // a delete returns no entry
}
