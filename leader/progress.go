package leader

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// ReplicaProgress is one replica as the volume's primary engine sees it.
type ReplicaProgress struct {
	Addr         string `json:"addr"`
	State        string `json:"state"` // the engine's: in-sync, resyncing, out-of-sync, dropped, unavailable
	Reason       string `json:"reason,omitempty"`
	MissingBytes int64  `json:"missing_bytes,omitempty"`
	// The running resync, when State is resyncing.
	Mode        string  `json:"mode,omitempty"`
	TotalBytes  int64   `json:"total_bytes,omitempty"`
	DoneBytes   int64   `json:"done_bytes,omitempty"`
	Percent     float64 `json:"percent,omitempty"`
	BytesPerSec float64 `json:"bytes_per_sec,omitempty"`
	ETASeconds  float64 `json:"eta_seconds,omitempty"`
}

// ResyncRecord is <prefix>volumes/<vol>/resync: the replicas' states and
// resync progress as the primary of Epoch on Node saw them at Updated.
// The primary's node rewrites it at most every few seconds, and only
// when something changed; it is for operators (`saddlebag status`) and
// decides nothing. A record of another epoch than the current primary's
// is stale.
type ResyncRecord struct {
	Epoch    uint64            `json:"epoch"`
	Node     string            `json:"node"`
	Updated  time.Time         `json:"updated"`
	Replicas []ReplicaProgress `json:"replicas"`
}

// PutResync writes the volume's progress record, only while the volume's
// record exists (so that a volume deleted meanwhile is not given the key
// back).
func (c *Client) PutResync(ctx context.Context, volume string, rec ResyncRecord) error {
	if err := ValidateName("volume id", volume); err != nil {
		return err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode resync record: %w", err)
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	key := c.keys.Resync(volume)
	ok, resp, _, err := c.api.Txn().Txn(api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVGet, Key: c.keys.Volume(volume)}}, // fails the transaction when absent
		{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: b}},
	}, qopts(ctx))
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	if !ok {
		var whats []string
		for _, e := range resp.Errors {
			whats = append(whats, e.What)
		}
		return fmt.Errorf("write %s: %w: %s", key, ErrNotFound, strings.Join(whats, "; "))
	}
	return nil
}

// ReadResync returns the volume's progress record, or ErrNotFound.
func (c *Client) ReadResync(ctx context.Context, volume string) (ResyncRecord, error) {
	var rec ResyncRecord
	if err := ValidateName("volume id", volume); err != nil {
		return rec, err
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	key := c.keys.Resync(volume)
	pair, _, err := c.api.KV().Get(key, qopts(ctx))
	if err != nil {
		return rec, fmt.Errorf("read %s: %w", key, err)
	}
	if pair == nil {
		return rec, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	if err := json.Unmarshal(pair.Value, &rec); err != nil {
		return rec, fmt.Errorf("decode %s: %w", key, err)
	}
	return rec, nil
}

// ReplicaNodes maps each node record's replica address to its node name.
func (c *Client) ReplicaNodes(ctx context.Context) (map[string]string, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	pairs, _, err := c.api.KV().List(c.keys.Nodes(), qopts(ctx))
	if err != nil {
		return nil, fmt.Errorf("list node records: %w", err)
	}
	out := map[string]string{}
	for _, p := range pairs {
		var rec NodeRecord
		if json.Unmarshal(p.Value, &rec) != nil || rec.ReplicaAddr == "" {
			continue
		}
		if rec.Node == "" {
			rec.Node = strings.TrimPrefix(p.Key, c.keys.Nodes())
		}
		out[rec.ReplicaAddr] = rec.Node
	}
	return out, nil
}
