package leader

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Tombstone is a replica of a deleted volume that is still on its node:
// the node was down when the volume was deleted, so the replica could not
// be removed then; or a replica re-replication replaced, dropped from its
// volume's record while its node was down. The controller removes the replica when the node is
// back and then the tombstone; until then no new replica of a volume of
// the same id may be placed on that node (it would reuse the old data).
type Tombstone struct {
	Volume  string    `json:"volume"`
	Node    string    `json:"node"`
	Addr    string    `json:"addr"` // the replica server's address when the volume was deleted
	Deleted time.Time `json:"deleted"`
	// Index is the tombstone's modify index in Consul, for
	// DeleteTombstone; not stored.
	Index uint64 `json:"-"`
}

// DeleteVolumeLeaving deletes a volume's record like DeleteVolume
// (check-and-set at index, under leadership, with the volume's other
// keys) and, in the same transaction, writes a tombstone for each of
// orphans: the replicas left on nodes that were down. Either both happen
// or neither.
func (c *Client) DeleteVolumeLeaving(ctx context.Context, id string, index uint64, leadership *Lease, orphans []ReplicaRecord) error {
	if err := ValidateName("volume id", id); err != nil {
		return err
	}
	if index == 0 {
		return &ConflictError{Key: c.keys.Volume(id), Reason: "delete of an existing record needs its index"}
	}
	key := c.keys.Volume(id)
	ops := []*api.KVTxnOp{
		{Verb: api.KVDeleteCAS, Key: key, Index: index},
		{Verb: api.KVDeleteTree, Key: key + "/"},
	}
	now := time.Now().UTC()
	for _, r := range orphans {
		if err := ValidateNodeName(r.Node); err != nil {
			return err
		}
		b, err := json.Marshal(Tombstone{Volume: id, Node: r.Node, Addr: r.Addr, Deleted: now})
		if err != nil {
			return fmt.Errorf("encode tombstone: %w", err)
		}
		ops = append(ops, &api.KVTxnOp{Verb: api.KVSet, Key: c.keys.Tombstone(id, r.Node), Value: b})
	}
	_, err := c.casTxn(ctx, key, index, leadership, ops...)
	return err
}

// PutTombstones writes a tombstone for each of orphans, replicas of
// volume id that were dropped from its record while their node was down
// (re-replication replaced them), under leadership.
func (c *Client) PutTombstones(ctx context.Context, id string, orphans []ReplicaRecord, leadership *Lease) error {
	if err := ValidateName("volume id", id); err != nil {
		return err
	}
	if len(orphans) == 0 {
		return nil
	}
	var ops []*api.KVTxnOp
	now := time.Now().UTC()
	for _, r := range orphans {
		if err := ValidateNodeName(r.Node); err != nil {
			return err
		}
		b, err := json.Marshal(Tombstone{Volume: id, Node: r.Node, Addr: r.Addr, Deleted: now})
		if err != nil {
			return fmt.Errorf("encode tombstone: %w", err)
		}
		ops = append(ops, &api.KVTxnOp{Verb: api.KVSet, Key: c.keys.Tombstone(id, r.Node), Value: b})
	}
	_, err := c.casTxn(ctx, c.keys.Tombstone(id, orphans[0].Node), 0, leadership, ops...)
	return err
}

// ListTombstones returns every tombstone, ordered by volume, then node.
func (c *Client) ListTombstones(ctx context.Context) ([]Tombstone, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	pairs, _, err := c.api.KV().List(c.keys.Tombstones(), qopts(ctx))
	if err != nil {
		return nil, fmt.Errorf("list tombstones: %w", err)
	}
	var out []Tombstone
	for _, p := range pairs {
		vol, node, ok := strings.Cut(strings.TrimPrefix(p.Key, c.keys.Tombstones()), "/")
		if !ok || ValidateName("volume id", vol) != nil || ValidateNodeName(node) != nil {
			continue // not a key this layout makes
		}
		var t Tombstone
		if err := json.Unmarshal(p.Value, &t); err != nil {
			return nil, fmt.Errorf("decode %s: %w", p.Key, err)
		}
		t.Volume, t.Node, t.Index = vol, node, p.ModifyIndex // the key is authoritative
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Volume != out[j].Volume {
			return out[i].Volume < out[j].Volume
		}
		return out[i].Node < out[j].Node
	})
	return out, nil
}

// DeleteTombstone removes a tombstone once its replica is gone:
// check-and-set on t.Index, under leadership.
func (c *Client) DeleteTombstone(ctx context.Context, t Tombstone, leadership *Lease) error {
	if err := ValidateName("volume id", t.Volume); err != nil {
		return err
	}
	if err := ValidateNodeName(t.Node); err != nil {
		return err
	}
	key := c.keys.Tombstone(t.Volume, t.Node)
	_, err := c.casTxn(ctx, key, t.Index, leadership, &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: key, Index: t.Index})
	return err
}
