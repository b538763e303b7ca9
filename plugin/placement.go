package plugin

import (
	"context"
	"time"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/scheduler"
)

// snapshot reads every node (with health) and every volume record.
func (c *Controller) snapshot(ctx context.Context) ([]leader.NodeState, []leader.VolumeRecord, error) {
	nodes, err := c.cfg.Client.ListNodes(ctx)
	if err != nil {
		return nil, nil, err
	}
	vols, err := c.cfg.Client.ListVolumes(ctx)
	if err != nil {
		return nil, nil, err
	}
	return nodes, vols, nil
}

func nodeMap(nodes []leader.NodeState) map[string]leader.NodeState {
	m := make(map[string]leader.NodeState, len(nodes))
	for _, n := range nodes {
		m[n.Node] = n
	}
	return m
}

// schedulerNodes is the scheduler's view of the nodes: health from
// Consul, labels plus the node's topology key (so a requisite naming a
// node matches), replicas counted over every volume record, and when each
// unhealthy node was first seen down (downSince; nil: now unknown).
func schedulerNodes(nodes []leader.NodeState, vols []leader.VolumeRecord, downSince map[string]time.Time) []scheduler.Node {
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
			Labels: nodeSegments(n.Node, n.Labels), Replicas: count[n.Node]}
		if !n.Healthy {
			sn.DownSince = downSince[n.Node]
		}
		out = append(out, sn)
	}
	return out
}
