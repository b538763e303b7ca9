package leader

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
)

// NodeState is a node record together with what Consul's health checks
// say about the node right now.
type NodeState struct {
	NodeRecord
	// Healthy: the node's saddlebag-node service is registered and every
	// check on it (its TTL check and the Consul agent's serfHealth) passes.
	Healthy bool
	// Why says what is failing when not healthy.
	Why string
}

// ListNodes returns every node record with the node's current health,
// sorted by node name.
func (c *Client) ListNodes(ctx context.Context) ([]NodeState, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	pairs, _, err := c.api.KV().List(c.keys.Nodes(), qopts(ctx))
	if err != nil {
		return nil, fmt.Errorf("list node records: %w", err)
	}
	entries, _, err := c.api.Health().Service(NodeService, "", false, qopts(ctx))
	if err != nil {
		return nil, fmt.Errorf("node health: %w", err)
	}
	health := map[string]string{} // node -> "" when passing, else why
	for _, e := range entries {
		node := e.Service.Meta["node"]
		if node == "" {
			continue
		}
		why := ""
		for _, ch := range e.Checks {
			if ch.Status != api.HealthPassing && !strings.HasPrefix(ch.CheckID, "saddlebag-volume:") {
				why += fmt.Sprintf("%s %s; ", ch.CheckID, ch.Status)
			}
		}
		health[node] = strings.TrimSuffix(why, "; ")
	}
	var out []NodeState
	for _, p := range pairs {
		var rec NodeRecord
		if err := json.Unmarshal(p.Value, &rec); err != nil {
			return nil, fmt.Errorf("decode %s: %w", p.Key, err)
		}
		if rec.Node == "" {
			rec.Node = strings.TrimPrefix(p.Key, c.keys.Nodes())
		}
		st := NodeState{NodeRecord: rec}
		why, registered := health[rec.Node]
		switch {
		case !registered:
			st.Why = "saddlebag-node service not registered"
		case why != "":
			st.Why = why
		default:
			st.Healthy = true
		}
		out = append(out, st)
	}
	return out, nil
}
