package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/scheduler"
)

// TopologyNodeKey is the topology segment naming a node
// (scheduler.TopologyNodeKey, where a node's segments are made).
const TopologyNodeKey = scheduler.TopologyNodeKey

// volumeIDFor derives a volume's id from its CreateVolume name: the name
// itself when it is a valid volume id (so operators see the same word in
// Nomad and Consul), otherwise a digest of it.
func volumeIDFor(name string) string {
	if replication.ValidateVolumeID(name) == nil {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "h-" + hex.EncodeToString(sum[:16])
}

// access modes a single-primary block device supports.
func supportedMode(m csi.VolumeCapability_AccessMode_Mode) bool {
	return m == csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER ||
		m == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
}

// checkCapability validates one capability's shape (InvalidArgument when
// malformed) and returns why it is unsupported ("" when supported).
func checkCapability(c *csi.VolumeCapability) (string, error) {
	if c == nil {
		return "", fmt.Errorf("volume capability is nil")
	}
	if c.GetAccessMode() == nil {
		return "", fmt.Errorf("volume capability has no access mode")
	}
	if c.GetBlock() == nil && c.GetMount() == nil {
		return "", fmt.Errorf("volume capability has neither block nor mount access type")
	}
	mode := c.GetAccessMode().GetMode()
	if !supportedMode(mode) {
		return fmt.Sprintf("access mode %s is not supported: a volume has one primary node (use SINGLE_NODE_WRITER or SINGLE_NODE_READER_ONLY)", mode), nil
	}
	if m := c.GetMount(); m != nil && m.GetFsType() != "" && !slices.Contains(volspec.FSTypes, m.GetFsType()) {
		return fmt.Sprintf("fs_type %q is not supported (%s)", m.GetFsType(), strings.Join(volspec.FSTypes, " or ")), nil
	}
	return "", nil
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

// capabilityFits says whether a valid, supported capability fits a volume
// ("" when it does).
func capabilityFits(c *csi.VolumeCapability, rec leader.VolumeRecord) string {
	if m := c.GetMount(); m != nil && m.GetFsType() != "" && m.GetFsType() != rec.Spec.FSType {
		return fmt.Sprintf("volume %s holds %s, not %s", rec.ID, rec.Spec.FSType, m.GetFsType())
	}
	return ""
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
