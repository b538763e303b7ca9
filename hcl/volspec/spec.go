package volspec

import (
	"os"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"

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

// rawSpec is the file as gohcl decodes it, with the ranges the checks
// point at. Attributes are pointers so that absent and empty differ.
type rawSpec struct {
	ID          *string `hcl:"id,optional"`
	Name        *string `hcl:"name,optional"`
	Namespace   *string `hcl:"namespace,optional"`
	Type        *string `hcl:"type,optional"`
	PluginID    *string `hcl:"plugin_id,optional"`
	CapacityMin *string `hcl:"capacity_min,optional"`
	CapacityMax *string `hcl:"capacity_max,optional"`
	SnapshotID  *string `hcl:"snapshot_id,optional"`
	CloneID     *string `hcl:"clone_id,optional"`

	Capabilities    []rawCapability     `hcl:"capability,block"`
	MountOptions    *rawMountOptions    `hcl:"mount_options,block"`
	TopologyRequest *rawTopologyRequest `hcl:"topology_request,block"`
	Secrets         *rawMap             `hcl:"secrets,block"`
	Parameters      *rawMap             `hcl:"parameters,block"`

	IDRange          hcl.Range `hcl:"id,attr_value_range"`
	NameRange        hcl.Range `hcl:"name,attr_value_range"`
	NamespaceRange   hcl.Range `hcl:"namespace,attr_value_range"`
	TypeRange        hcl.Range `hcl:"type,attr_value_range"`
	PluginIDRange    hcl.Range `hcl:"plugin_id,attr_value_range"`
	CapacityMinRange hcl.Range `hcl:"capacity_min,attr_value_range"`
	CapacityMaxRange hcl.Range `hcl:"capacity_max,attr_value_range"`
	SnapshotIDRange  hcl.Range `hcl:"snapshot_id,attr_value_range"`
	CloneIDRange     hcl.Range `hcl:"clone_id,attr_value_range"`
}

type rawCapability struct {
	AccessMode          *string   `hcl:"access_mode,optional"`
	AttachmentMode      *string   `hcl:"attachment_mode,optional"`
	AccessModeRange     hcl.Range `hcl:"access_mode,attr_value_range"`
	AttachmentModeRange hcl.Range `hcl:"attachment_mode,attr_value_range"`
	DefRange            hcl.Range `hcl:",def_range"`
}

type rawMountOptions struct {
	FSType      *string   `hcl:"fs_type,optional"`
	MountFlags  []string  `hcl:"mount_flags,optional"`
	FSTypeRange hcl.Range `hcl:"fs_type,attr_value_range"`
	DefRange    hcl.Range `hcl:",def_range"`
}

type rawTopologyRequest struct {
	Required  *rawTopologies `hcl:"required,block"`
	Preferred *rawTopologies `hcl:"preferred,block"`
	DefRange  hcl.Range      `hcl:",def_range"`
}

type rawTopologies struct {
	Topologies []rawTopology `hcl:"topology,block"`
	DefRange   hcl.Range     `hcl:",def_range"`
}

// rawTopology keeps its body: segments may be a block (as Nomad's docs
// write it) or an attribute holding an object (segments = { rack = "r1" }),
// and gohcl decodes a name as one or the other.
type rawTopology struct {
	Body     hcl.Body  `hcl:",remain"`
	DefRange hcl.Range `hcl:",def_range"`
}

// rawMap is a block of free-form attributes: parameters, secrets.
type rawMap struct {
	Body     hcl.Body  `hcl:",remain"`
	DefRange hcl.Range `hcl:",def_range"`
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

// Parse decodes a volume spec file as `nomad volume create` reads it, HCL
// or (when filename ends in ".json") JSON, and checks it, Saddlebag's
// parameters included. Every problem found is returned, each with the
// range it is about, errors and warnings (an unknown parameter) ordered
// by position; except that a syntax error is returned alone, the first
// one, since what follows it cannot be read reliably (an unterminated
// string makes every later line an error). The Spec is nil exactly when
// diags has errors.
func Parse(filename string, src []byte) (*Spec, hcl.Diagnostics) {
	p := hclparse.NewParser()
	var f *hcl.File
	var diags hcl.Diagnostics
	if strings.HasSuffix(filename, ".json") {
		f, diags = p.ParseJSON(src, filename)
	} else {
		f, diags = p.ParseHCL(src, filename)
		diags = hintSyntax(diags, src)
	}
	if diags.HasErrors() {
		return nil, hclutil.FirstError(diags)
	}
	var raw rawSpec
	diags = append(diags, hclutil.DropOverlapping(gohcl.DecodeBody(f.Body, nil, &raw))...)
	if diags.HasErrors() {
		hclutil.SortByPosition(diags)
		return nil, diags
	}
	spec, more := check(&raw, f.Body.MissingItemRange(), src)
	diags = append(diags, more...)
	hclutil.SortByPosition(diags)
	if diags.HasErrors() {
		return nil, diags
	}
	return spec, diags
}

// hintSyntax adds to HCL's syntax errors a hint for the one form Nomad's
// documentation uses that HCL 2 does not read: a one-line block with
// quoted keys or several keys, as in topology { segments { "rack" = "R1", "zone" = "a" } }.
func hintSyntax(diags hcl.Diagnostics, src []byte) hcl.Diagnostics {
	lines := strings.Split(string(src), "\n")
	for _, d := range diags {
		if d.Subject == nil || d.Severity != hcl.DiagError {
			continue
		}
		ln := d.Subject.Start.Line
		if ln < 1 || ln > len(lines) || !strings.Contains(lines[ln-1], "segments") || !strings.Contains(lines[ln-1], "{") {
			continue
		}
		d.Detail += ` Nomad's one-line form segments { "rack" = "R1", "zone" = "a" } is HCL 1 only; write segments = { "rack" = "R1", "zone" = "a" } (which Nomad reads too), or put each segment on its own line inside segments { }.`
	}
	return diags
}
