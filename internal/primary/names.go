package primary

import (
	"context"
	"slices"
	"sync"

	"github.com/saddlebag/saddlebag/leader"
)

// nodeNames maps replica addresses to node names (from the node records
// in Consul) for the volume check's note. It reads the records again only
// when asked about an address it does not know, at most once per call.
type nodeNames struct {
	client *leader.Client
	mu     sync.Mutex
	names  map[string]string
}

// lookup returns the names of addrs it knows or can learn; a failed read
// leaves the addresses unnamed (the note shows them as addresses).
func (n *nodeNames) lookup(ctx context.Context, addrs []string) map[string]string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.client != nil && slices.ContainsFunc(addrs, func(a string) bool { return n.names[a] == "" }) {
		if m, err := n.client.ReplicaNodes(ctx); err == nil {
			n.names = m
		}
	}
	return n.names
}
