package leader

import (
	"fmt"
	"strings"
)

// DefaultPrefix is the KV prefix every key lives under unless configured.
const DefaultPrefix = "saddlebag/"

// Keys is the KV layout of DESIGN.md §3 under one prefix. It is the only
// place key names are spelled.
type Keys struct{ prefix string }

// NewKeys returns the layout under prefix ("" means DefaultPrefix); a
// missing trailing slash is added.
func NewKeys(prefix string) (Keys, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if strings.HasPrefix(prefix, "/") || strings.Contains(prefix, "//") {
		return Keys{}, fmt.Errorf("%w: kv prefix %q", ErrInvalid, prefix)
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return Keys{prefix: prefix}, nil
}

// Prefix returns the prefix, ending in a slash.
func (k Keys) Prefix() string { return k.prefix }

// Leader is the controller leadership lock.
func (k Keys) Leader() string { return k.prefix + "leader" }

// Nodes is the prefix of every node record.
func (k Keys) Nodes() string { return k.prefix + "nodes/" }

// Node is a node's record: replica address, capacity, labels, version.
func (k Keys) Node(node string) string { return k.Nodes() + node }

// Volumes is the prefix of every volume's keys.
func (k Keys) Volumes() string { return k.prefix + "volumes/" }

// Volume is a volume's record (spec and replica set), written by the
// controller with check-and-set.
func (k Keys) Volume(id string) string { return k.Volumes() + id }

// Primary is the volume's primary lock; its LockIndex is the epoch.
func (k Keys) Primary(id string) string { return k.Volume(id) + "/primary" }

// EpochFloor is added to the primary lock's LockIndex to make the
// volume's epoch. It is 0 (absent) until Consul's lock index is found
// below an epoch the replicas have promised (Consul lost its data), and
// only a holder of the primary lock writes it.
func (k Keys) EpochFloor(id string) string { return k.Volume(id) + "/epoch-floor" }

// InSync is the volume's in-sync record, written by the primary.
func (k Keys) InSync(id string) string { return k.Volume(id) + "/insync" }
