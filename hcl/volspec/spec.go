package volspec

import (
	"os"

	"github.com/hashicorp/hcl/v2"

	"github.com/saddlebag/saddlebag/hcl/internal/hclutil"
)

// Spec is one volume spec file, decoded and checked.
type Spec struct {
	ID        string // the volume's ID in Nomad (volume.source in a job)
	Name      string // the volume's name, sent to CreateVolume
	Namespace string // Nomad namespace; "" means the caller's
	Type      string // always "csi" in a valid spec
	PluginID  string

	// CapacityMin and CapacityMax are in bytes, 0 when not given. The file
	// writes them as strings with units, read the way Nomad reads them
	// ("10GiB" is 10×2^30, "10GB" and "10G" are 10×10^9).
	CapacityMin, CapacityMax int64
	// Size is the size the plugin makes the volume, picked from the
	// capacity range by the rule CreateVolume follows (Size).
	Size int64

	Capabilities    []Capability
	MountOptions    *MountOptions    // nil when absent
	TopologyRequest *TopologyRequest // nil when absent
	Secrets         map[string]string
	// Parameters is the whole parameters block as Nomad sends it to the
	// plugin (numbers and bools turned into strings the way Nomad does);
	// Params is Saddlebag's reading of it.
	Parameters map[string]string
	Params     Params
	SnapshotID string
	CloneID    string

	// Ranges says where each setting was written, for diagnostics a
	// caller adds later (say, replicas larger than the cluster).
	Ranges Ranges
}

// Ranges are the source ranges of a Spec's settings: the value of each
// attribute, a zero Range when it is absent.
type Ranges struct {
	File                                hcl.Range // the start of the file: where a missing setting is reported
	ID, Name, Namespace, Type, PluginID hcl.Range
	CapacityMin, CapacityMax            hcl.Range
	SnapshotID, CloneID                 hcl.Range
	ParametersBlock                     hcl.Range            // the parameters block's header
	Parameters                          map[string]hcl.Range // each parameter's value
}

// Capability is one capability block.
type Capability struct {
	AccessMode     string // one of AccessModes
	AttachmentMode string // one of AttachmentModes
	DefRange       hcl.Range
}

// MountOptions is the mount_options block.
type MountOptions struct {
	FSType      string
	MountFlags  []string
	FSTypeRange hcl.Range // the fs_type value
	DefRange    hcl.Range
}

// TopologyRequest is the topology_request block: the topologies the
// volume must be accessible from and those it should prefer.
type TopologyRequest struct {
	Required  []Topology
	Preferred []Topology
	DefRange  hcl.Range
}

// Topology is one topology block: segments such as rack = "r1".
type Topology struct {
	Segments map[string]string
	DefRange hcl.Range
}

// The access and attachment modes Nomad accepts, spelled as in spec files.
var (
	AccessModes = []string{
		"single-node-reader-only", "single-node-writer",
		"multi-node-reader-only", "multi-node-single-writer", "multi-node-multi-writer",
	}
	AttachmentModes = []string{"file-system", "block-device"}
	// SupportedAccessModes are the access modes Saddlebag serves: a volume
	// has one primary, on one node, at a time.
	SupportedAccessModes = []string{"single-node-reader-only", "single-node-writer"}
)

// rawSpec is the file as Nomad decodes it (nomad.go), with the ranges
// the checks point at. Attributes are pointers so that absent and empty differ.
type rawSpec struct {
	ID          *string
	Name        *string
	Namespace   *string
	Type        *string
	PluginID    *string
	CapacityMin *string
	CapacityMax *string
	SnapshotID  *string
	CloneID     *string

	Capabilities    []rawCapability
	MountOptions    *rawMountOptions
	TopologyRequest *rawTopologyRequest
	Secrets         *rawMap
	Parameters      *rawMap

	IDRange          hcl.Range
	NameRange        hcl.Range
	NamespaceRange   hcl.Range
	TypeRange        hcl.Range
	PluginIDRange    hcl.Range
	CapacityMinRange hcl.Range
	CapacityMaxRange hcl.Range
	SnapshotIDRange  hcl.Range
	CloneIDRange     hcl.Range
}

type rawCapability struct {
	AccessMode          *string
	AttachmentMode      *string
	AccessModeRange     hcl.Range
	AttachmentModeRange hcl.Range
	DefRange            hcl.Range
}

type rawMountOptions struct {
	FSType      *string
	MountFlags  []string
	FSTypeRange hcl.Range
	DefRange    hcl.Range
}

type rawTopologyRequest struct {
	Required  *rawTopologies
	Preferred *rawTopologies
	DefRange  hcl.Range
}

type rawTopologies struct {
	Topologies []rawTopology
	DefRange   hcl.Range
}

// rawTopology is one topology as Nomad sends it: a body holding
// segments = { ... } (topology.go reads it).
type rawTopology struct {
	Body     hcl.Body
	DefRange hcl.Range
}

// rawMap is a block of free-form attributes: parameters, secrets.
type rawMap struct {
	Body     hcl.Body
	DefRange hcl.Range
}

// ParseFile reads and parses the spec file at path; see Parse.
func ParseFile(path string) (*Spec, hcl.Diagnostics) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  "cannot read volume spec",
			Detail:   err.Error(),
			Subject:  &hcl.Range{Filename: path, Start: hcl.InitialPos, End: hcl.InitialPos},
		}}
	}
	return Parse(path, src)
}

// Parse decodes a volume spec file as `nomad volume create` reads it
// (see nomad.go): HCL 1, or JSON when its first non-space character is
// "{", and checks it, Saddlebag's parameters included. Every problem
// found is returned, each with the range it is about, errors and
// warnings (an unknown parameter, a setting Nomad ignores) ordered by
// position; except that a syntax error is returned alone, since what
// follows it cannot be read reliably. The Spec is nil exactly when diags
// has errors.
func Parse(filename string, src []byte) (*Spec, hcl.Diagnostics) {
	d, diags := parseNomad(filename, src)
	if d == nil {
		hclutil.SortByPosition(diags)
		return nil, diags
	}
	missing := hcl.Range{Filename: filename, Start: hcl.InitialPos, End: hcl.InitialPos}
	spec, more := check(&d.raw, missing, src)
	diags = append(diags, more...)
	hclutil.SortByPosition(diags)
	if diags.HasErrors() {
		return nil, diags
	}
	return spec, diags
}
