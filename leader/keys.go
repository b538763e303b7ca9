package leader

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// DefaultPrefix is the KV prefix every key lives under unless configured.
const DefaultPrefix = "saddlebag/"

// Keys is the KV layout (docs/architecture.md, "Consul layout") under one prefix. It is the only
// place key names are spelled.
//
// Every name that goes into a key (a volume id, a node name) is one
// segment, and no input can change the layout's structure: a name that
// fails ValidateName (a '/', a "." or ".." that Consul's HTTP layer would
// clean away, "..", "%", control characters, more than 128 characters) is
// never spelled into a key. The Client's functions refuse such a name with
// ErrInvalid before they build a key; Keys itself, as a second line of
// defence, maps it to a quarantine segment, "~invalid-" and a digest of
// the name, which no valid name produces, so a caller that forgot to
// check reads nothing and can write only under that one segment.
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
	for _, seg := range strings.Split(strings.TrimSuffix(prefix, "/"), "/") {
		if ValidateName("kv prefix segment", seg) != nil {
			return Keys{}, fmt.Errorf("%w: kv prefix %q: each segment must be a valid name (letters, digits, '.', '_', '-', not \"..\")", ErrInvalid, prefix)
		}
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return Keys{prefix: prefix}, nil
}

// namePattern is the one shape of a name spelled into a key: the same
// rule as replication/wire.ValidateVolumeID, which leader must not import.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidateName reports whether s can be one segment of a key: 1-128
// letters, digits, '.', '_' or '-', starting with a letter or digit and
// without "..". what names the field in the error ("volume id", "node").
func ValidateName(what, s string) error {
	if !namePattern.MatchString(s) || strings.Contains(s, "..") {
		return fmt.Errorf("%w: %s %.140q must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit, without \"..\"",
			ErrInvalid, what, s)
	}
	return nil
}

// ValidateNodeName reports whether node can name a saddlebag node (or a
// controller instance): its node record key, its service and check IDs
// and the topology segment the CSI plugin reports all carry it.
func ValidateNodeName(node string) error { return ValidateName("node name", node) }

// segment returns s when it is a valid name, else its quarantine segment.
func segment(s string) string {
	if ValidateName("", s) == nil {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "~invalid-" + hex.EncodeToString(sum[:16])
}

// Prefix returns the prefix, ending in a slash.
func (k Keys) Prefix() string { return k.prefix }

// Leader is the controller leadership lock.
func (k Keys) Leader() string { return k.prefix + "leader" }

// Nodes is the prefix of every node record.
func (k Keys) Nodes() string { return k.prefix + "nodes/" }

// Node is a node's record: replica address, capacity, labels, version.
func (k Keys) Node(node string) string { return k.Nodes() + segment(node) }

// Volumes is the prefix of every volume's keys.
func (k Keys) Volumes() string { return k.prefix + "volumes/" }

// Volume is a volume's record (spec and replica set), written by the
// controller with check-and-set.
func (k Keys) Volume(id string) string { return k.Volumes() + segment(id) }

// Primary is the volume's primary lock; its LockIndex is the epoch.
func (k Keys) Primary(id string) string { return k.Volume(id) + "/primary" }

// EpochFloor is added to the primary lock's LockIndex to make the
// volume's epoch. It is 0 (absent) until Consul's lock index is found
// below an epoch the replicas have promised (Consul lost its data), and
// only a holder of the primary lock writes it.
func (k Keys) EpochFloor(id string) string { return k.Volume(id) + "/epoch-floor" }

// Tombstones is the prefix of every tombstone.
func (k Keys) Tombstones() string { return k.prefix + "tombstones/" }

// Tombstone is the tombstone of a deleted volume's replica left on node
// (its node was down when the volume was deleted), written by the
// controller and removed once the replica is.
func (k Keys) Tombstone(id, node string) string {
	return k.Tombstones() + segment(id) + "/" + segment(node)
}

// InSync is the volume's in-sync record, written by the primary.
func (k Keys) InSync(id string) string { return k.Volume(id) + "/insync" }

// Resync is the volume's replica progress record, written by its
// primary's node (rate-limited) for `saddlebag status`.
func (k Keys) Resync(id string) string { return k.Volume(id) + "/resync" }
