package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/replication/wire"
	"github.com/saddlebag/saddlebag/scheduler"
)

// TopologyNodeKey is the topology segment naming a node
// (scheduler.TopologyNodeKey, where a node's segments are made).
const TopologyNodeKey = scheduler.TopologyNodeKey

// volumeIDFor derives a volume's id from its CreateVolume name: the name
// itself when it is a valid volume id (so operators see the same word in
// Nomad and Consul), otherwise a digest of it.
func volumeIDFor(name string) string {
	if wire.ValidateVolumeID(name) == nil {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "h-" + hex.EncodeToString(sum[:16])
}

// resolveFSType is volspec's rule (Params.ResolveFSType) for a CSI
// request, whose mount capabilities may each name an fs_type: they must
// agree with each other, and then with the parameters.
func resolveFSType(params volspec.Params, caps []*csi.VolumeCapability) (string, error) {
	mountFS := ""
	for _, c := range caps {
		if m := c.GetMount(); m != nil && m.GetFsType() != "" {
			if mountFS != "" && mountFS != m.GetFsType() {
				return "", fmt.Errorf("the mount capabilities ask for different file systems (%s and %s): give one", mountFS, m.GetFsType())
			}
			mountFS = m.GetFsType()
		}
	}
	return params.ResolveFSType(mountFS)
}

// topologyOf turns CSI topologies into segment maps.
func topologyOf(ts []*csi.Topology) []map[string]string {
	var out []map[string]string
	for _, t := range ts {
		if len(t.GetSegments()) > 0 {
			out = append(out, maps.Clone(t.GetSegments()))
		}
	}
	return out
}
