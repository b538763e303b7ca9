package leader

import (
	"context"
	"encoding/json"
	"fmt"
)

// LeaderRecord is the value of the controller leadership lock key, written
// by AcquireLeadership in the same request that takes the lock.
type LeaderRecord struct {
	// Node is the active controller's name.
	Node string `json:"node"`
	// ForwardAddr is the host:port where the active controller serves the
	// CSI Controller service to standbys forwarding mutating calls ("" if
	// it serves none).
	ForwardAddr string `json:"forward_addr,omitempty"`
}

// ActiveController says who holds the leadership lock.
type ActiveController struct {
	LeaderRecord
	Session string
	Epoch   uint64 // the key's LockIndex
}

// ReadLeader returns the active controller from a consistent read of the
// leadership lock, or ErrNotFound when nobody holds it. A value left
// behind by a session that ended does not count: Consul clears the key's
// session when it invalidates it, and such a key is reported free.
func (c *Client) ReadLeader(ctx context.Context) (ActiveController, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	key := c.keys.Leader()
	pair, _, err := c.api.KV().Get(key, qopts(ctx))
	if err != nil {
		return ActiveController{}, fmt.Errorf("read %s: %w", key, err)
	}
	if pair == nil || pair.Session == "" {
		return ActiveController{}, fmt.Errorf("%s: no active controller: %w", key, ErrNotFound)
	}
	ac := ActiveController{Session: pair.Session, Epoch: pair.LockIndex}
	if err := json.Unmarshal(pair.Value, &ac.LeaderRecord); err != nil {
		// A holder from before the record was JSON wrote its bare name.
		ac.LeaderRecord = LeaderRecord{Node: string(pair.Value)}
	}
	return ac, nil
}

// AgentAddr returns the address the local Consul agent advertises to its
// cluster (its LAN member address): the host other machines reach this
// one at. (Consul's agent/self endpoint takes no context; the client's
// own HTTP timeouts bound it.)
func (c *Client) AgentAddr() (string, error) {
	m, err := c.api.Agent().Self()
	if err != nil {
		return "", fmt.Errorf("read consul agent self: %w", err)
	}
	member, _ := m["Member"]["Addr"].(string)
	if member == "" {
		return "", fmt.Errorf("consul agent self: no member address: %w", ErrNotFound)
	}
	return member, nil
}
