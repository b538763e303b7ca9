package node

import (
	"path/filepath"
	"strings"
)

// DefaultPluginMount is Nomad's default stage_publish_base_dir: the path,
// inside the plugin task, where Nomad expects the host's
// <data_dir>/client/csi/<type>/<plugin id> to appear.
const DefaultPluginMount = "/local/csi"

// PathMapper translates the staging and target paths Nomad passes to host
// paths (docs/architecture.md, "What we measured about Nomad"). Under docker Nomad mounts the host directory at
// the plugin mount, so the paths are right as they are; under raw_exec
// nothing is mounted, and the paths must be rewritten to the host
// directory. With HostDir empty every path is used as given, which is
// also right when stage_publish_base_dir is set to the literal host
// directory.
type PathMapper struct {
	// HostDir is <client data_dir>/client/csi/<type>/<plugin id> on the
	// host ("" disables translation).
	HostDir string
	// PluginMount is the stage_publish_base_dir Nomad uses (default
	// DefaultPluginMount).
	PluginMount string
}

// Host returns the host path for p: p under PluginMount is moved under
// HostDir; anything else (already a host path) is returned cleaned.
func (m PathMapper) Host(p string) string {
	if p == "" {
		return ""
	}
	p = filepath.Clean(p)
	if m.HostDir == "" {
		return p
	}
	base := m.PluginMount
	if base == "" {
		base = DefaultPluginMount
	}
	base = filepath.Clean(base)
	host := filepath.Clean(m.HostDir)
	if p == host || strings.HasPrefix(p, host+"/") {
		return p
	}
	if p == base {
		return host
	}
	if rest, ok := strings.CutPrefix(p, base+"/"); ok {
		return filepath.Join(host, rest)
	}
	return p
}
