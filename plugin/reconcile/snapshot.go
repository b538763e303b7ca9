package reconcile

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/scheduler"
)

// Snapshot reads every node (with health) and every volume record.
func Snapshot(ctx context.Context, c *leader.Client) ([]leader.NodeState, []leader.VolumeRecord, error) {
	nodes, err := c.ListNodes(ctx)
	if err != nil {
		return nil, nil, err
	}
	vols, err := c.ListVolumes(ctx)
	if err != nil {
		return nil, nil, err
	}
	return nodes, vols, nil
}

// NodeMap indexes nodes by name.
func NodeMap(nodes []leader.NodeState) map[string]leader.NodeState {
	m := make(map[string]leader.NodeState, len(nodes))
	for _, n := range nodes {
		m[n.Node] = n
	}
	return m
}

// SchedulerNodes is the scheduler's view of the nodes: health from
// Consul, labels plus the node's topology key (so a requisite naming a
// node matches), replicas counted over every volume record (a lost one
// does not count), and when each unhealthy node was first seen down
// (downSince; nil: not known).
func SchedulerNodes(nodes []leader.NodeState, vols []leader.VolumeRecord, downSince map[string]time.Time) []scheduler.Node {
	count := map[string]int{}
	for _, v := range vols {
		for _, r := range v.Replicas {
			if r.State != leader.ReplicaLost {
				count[r.Node]++
			}
		}
	}
	out := make([]scheduler.Node, 0, len(nodes))
	for _, n := range nodes {
		sn := scheduler.Node{ID: n.Node, Healthy: n.Healthy, FreeBytes: n.FreeBytes,
			Labels: scheduler.NodeSegments(n.Node, n.Labels), Replicas: count[n.Node]}
		if !n.Healthy {
			sn.DownSince = downSince[n.Node]
		}
		out = append(out, sn)
	}
	return out
}

// TombstonedNodes returns the nodes holding a tombstoned replica of
// volume id: no new replica of id may go there (the replica server would
// take the old replica's data for the new one).
func TombstonedNodes(ctx context.Context, c *leader.Client, id string) ([]string, error) {
	ts, err := c.ListTombstones(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range ts {
		if t.Volume == id {
			out = append(out, t.Node)
		}
	}
	return out, nil
}

// DeleteReplicas removes rec's replicas from their nodes, each request
// bounded by timeout; it tries every one and returns their errors joined.
func DeleteReplicas(ctx context.Context, dial replication.Dialer, rec leader.VolumeRecord, timeout time.Duration) error {
	var errs []error
	for _, r := range rec.Replicas {
		if err := replication.DeleteReplica(ctx, dial, r.Addr, rec.ID, timeout); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", r.Node, err))
		}
	}
	return errors.Join(errs...)
}
