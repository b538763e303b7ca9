package volspec

import (
	"fmt"
	"math"
	"slices"
	"strings"

	humanize "github.com/dustin/go-humanize"
	"github.com/hashicorp/hcl/v2"

	"github.com/saddlebag/saddlebag/hcl/internal/hclutil"
)

// BlockSize is the unit of a volume's size: sizes are whole multiples of
// it (DESIGN.md §4).
const BlockSize = 4096

// MinXFSBytes is the smallest device mkfs.xfs formats (xfsprogs 5.19 and
// later refuse anything under 300 MiB).
const MinXFSBytes = 300 << 20

// check turns the decoded file into a Spec, reporting every semantic
// problem at the range it is about. missing is where absent settings are
// reported: the start of the file, as HCL itself does.
func check(raw *rawSpec, missing hcl.Range) (*Spec, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	s := &Spec{
		ID: deref(raw.ID), Name: deref(raw.Name), Namespace: deref(raw.Namespace),
		Type: deref(raw.Type), PluginID: deref(raw.PluginID),
		SnapshotID: deref(raw.SnapshotID), CloneID: deref(raw.CloneID),
		Ranges: Ranges{
			File: missing, ID: raw.IDRange, Name: raw.NameRange, Namespace: raw.NamespaceRange,
			Type: raw.TypeRange, PluginID: raw.PluginIDRange,
			CapacityMin: raw.CapacityMinRange, CapacityMax: raw.CapacityMaxRange,
			SnapshotID: raw.SnapshotIDRange, CloneID: raw.CloneIDRange,
		},
	}
	errAt := func(r hcl.Range, summary, detail string) { diags = append(diags, hclutil.Error(r, summary, detail)) }

	required := []struct {
		name, value, hint string
		at                hcl.Range
	}{
		{"id", s.ID, `the volume's ID in Nomad, which jobs name in volume "..." { source = ... }, e.g. id = "postgres"`, raw.IDRange},
		{"name", s.Name, `the name the plugin creates the volume under, e.g. name = "postgres"`, raw.NameRange},
		{"plugin_id", s.PluginID, `the ID the Saddlebag plugin jobs register in their csi_plugin block, e.g. plugin_id = "saddlebag"`, raw.PluginIDRange},
	}
	for _, r := range required {
		switch {
		case r.at == (hcl.Range{}):
			errAt(missing, r.name+" is missing", "set "+r.hint)
		case strings.TrimSpace(r.value) == "":
			errAt(r.at, r.name+" is empty", "set "+r.hint)
		}
	}
	switch {
	case raw.Type == nil:
		errAt(missing, "type is missing", `a Saddlebag volume is type = "csi"`)
	case !strings.EqualFold(s.Type, "csi"):
		errAt(raw.TypeRange, fmt.Sprintf("type %q is not served by Saddlebag", s.Type), `type must be "csi" (Nomad's "host" volumes do not go through CSI plugins)`)
	default:
		s.Type = "csi"
	}
	if s.SnapshotID != "" && s.CloneID != "" {
		errAt(raw.CloneIDRange, "snapshot_id and clone_id are both set", "a volume starts from a snapshot or from a clone of another volume, not both: keep one")
	}

	diags = append(diags, checkCapacity(s, raw)...)
	diags = append(diags, checkCapabilities(s, raw, missing)...)

	if m := raw.MountOptions; m != nil {
		s.MountOptions = &MountOptions{FSType: deref(m.FSType), MountFlags: m.MountFlags, FSTypeRange: m.FSTypeRange, DefRange: m.DefRange}
	}
	if t := raw.TopologyRequest; t != nil {
		req, d := decodeTopologyRequest(t)
		s.TopologyRequest = req
		diags = append(diags, d...)
	}
	var secrets map[string]hclutil.Attr
	if raw.Secrets != nil {
		var d hcl.Diagnostics
		secrets, d = hclutil.BodyStringMap(raw.Secrets.Body, hclutil.BoolDigits)
		diags = append(diags, d...)
		s.Secrets = values(secrets)
	}
	paramDiags := checkParameters(s, raw)
	diags = append(diags, paramDiags...)
	if !paramDiags.HasErrors() {
		if field, msg := EncryptionProblem(s.Params, s.Secrets); field != "" {
			at := missing
			switch {
			case strings.HasPrefix(field, "secrets."):
				at = secrets[SecretPassphrase].ValueRange
			case raw.Parameters != nil:
				at = s.Ranges.Parameters[ParamEncrypted]
			}
			// The message names the field, never the secret's value.
			diags = append(diags, hclutil.Error(at, msg, ""))
		}
	}
	return s, diags
}

// checkCapacity reads capacity_min and capacity_max and checks that the
// range holds a size Saddlebag can make.
func checkCapacity(s *Spec, raw *rawSpec) hcl.Diagnostics {
	var diags hcl.Diagnostics
	parse := func(name string, v *string, at hcl.Range) (int64, bool) {
		if v == nil || *v == "" { // Nomad reads "" as not set
			return 0, true
		}
		n, err := humanize.ParseBytes(*v)
		switch {
		case err != nil:
			diags = append(diags, hclutil.Error(at, fmt.Sprintf("%s %q is not a size", name, *v),
				`write a number of bytes with an optional unit, like "10GiB", "500MiB", "1GB" or "1073741824"`))
			return 0, false
		case n > math.MaxInt64:
			diags = append(diags, hclutil.Error(at, fmt.Sprintf("%s %q is too large", name, *v), "a volume size must fit in 63 bits of bytes"))
			return 0, false
		case n == 0:
			diags = append(diags, hclutil.Error(at, fmt.Sprintf("%s %q is zero", name, *v), `write a size larger than zero, like "10GiB", or leave it out`))
			return 0, false
		}
		return int64(n), true
	}
	lo, okLo := parse("capacity_min", raw.CapacityMin, raw.CapacityMinRange)
	hi, okHi := parse("capacity_max", raw.CapacityMax, raw.CapacityMaxRange)
	s.CapacityMin, s.CapacityMax = lo, hi
	if !okLo || !okHi {
		return diags
	}
	switch {
	case hi != 0 && lo > hi:
		diags = append(diags, hclutil.Error(raw.CapacityMinRange,
			fmt.Sprintf("capacity_min (%s) is larger than capacity_max (%s)", *raw.CapacityMin, *raw.CapacityMax),
			"capacity_min must be at most capacity_max; set both to the same value for an exact size"))
	case hi != 0 && roundUp(max(lo, BlockSize)) > hi:
		diags = append(diags, hclutil.Error(raw.CapacityMaxRange,
			fmt.Sprintf("no size from capacity_min to capacity_max (%s) is a whole number of 4 KiB blocks", *raw.CapacityMax),
			fmt.Sprintf("Saddlebag volumes are a multiple of 4096 bytes: allow at least %d bytes (%s)", roundUp(max(lo, BlockSize)), humanize.IBytes(uint64(roundUp(max(lo, BlockSize)))))))
	}
	return diags
}

func roundUp(n int64) int64 {
	if n > math.MaxInt64-BlockSize {
		return math.MaxInt64
	}
	return (n + BlockSize - 1) / BlockSize * BlockSize
}

// checkCapabilities checks the capability blocks: at least one, each with
// a mode Nomad knows and Saddlebag serves.
func checkCapabilities(s *Spec, raw *rawSpec, missing hcl.Range) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if len(raw.Capabilities) == 0 {
		diags = append(diags, hclutil.Error(missing, "no capability block",
			`add at least one: capability { access_mode = "single-node-writer" attachment_mode = "file-system" } (each on its own line)`))
	}
	for _, c := range raw.Capabilities {
		capab := Capability{AccessMode: deref(c.AccessMode), AttachmentMode: deref(c.AttachmentMode), DefRange: c.DefRange}
		s.Capabilities = append(s.Capabilities, capab)
		switch {
		case c.AccessMode == nil:
			diags = append(diags, hclutil.Error(c.DefRange, "capability has no access_mode",
				"set access_mode to "+hclutil.List(SupportedAccessModes, true)))
		case !slices.Contains(AccessModes, capab.AccessMode):
			diags = append(diags, hclutil.Error(c.AccessModeRange, fmt.Sprintf("unknown access_mode %q", capab.AccessMode),
				"Nomad's access modes are "+hclutil.List(AccessModes, true)+suggestion(capab.AccessMode, AccessModes)))
		case !slices.Contains(SupportedAccessModes, capab.AccessMode):
			diags = append(diags, hclutil.Error(c.AccessModeRange, fmt.Sprintf("access_mode %q is not served by Saddlebag", capab.AccessMode),
				"a Saddlebag volume is served by one node at a time: use "+hclutil.List(SupportedAccessModes, true)))
		}
		switch {
		case c.AttachmentMode == nil:
			diags = append(diags, hclutil.Error(c.DefRange, "capability has no attachment_mode",
				"set attachment_mode to "+hclutil.List(AttachmentModes, true)))
		case !slices.Contains(AttachmentModes, capab.AttachmentMode):
			diags = append(diags, hclutil.Error(c.AttachmentModeRange, fmt.Sprintf("unknown attachment_mode %q", capab.AttachmentMode),
				"attachment_mode must be "+hclutil.List(AttachmentModes, true)+suggestion(capab.AttachmentMode, AttachmentModes)))
		}
	}
	if m := raw.MountOptions; m != nil && len(raw.Capabilities) > 0 && !slices.ContainsFunc(raw.Capabilities, func(c rawCapability) bool {
		return deref(c.AttachmentMode) != "block-device"
	}) {
		diags = append(diags, hclutil.Warning(m.DefRange, "mount_options has no effect",
			`every capability is attachment_mode = "block-device", which publishes the raw device and mounts nothing`))
	}
	return diags
}

func suggestion(got string, valid []string) string {
	if s := hclutil.Suggest(got, valid); s != "" {
		return fmt.Sprintf(" (did you mean %q?)", s)
	}
	return ""
}

// checkParameters reads the parameters block and checks Saddlebag's keys
// in it, each problem at its value; unknown keys are warnings, since
// Nomad passes them on unchanged.
func checkParameters(s *Spec, raw *rawSpec) hcl.Diagnostics {
	var diags hcl.Diagnostics
	attrs := map[string]hclutil.Attr{}
	if raw.Parameters != nil {
		var d hcl.Diagnostics
		attrs, d = hclutil.BodyStringMap(raw.Parameters.Body, hclutil.BoolDigits)
		diags = append(diags, d...)
		s.Ranges.ParametersBlock = raw.Parameters.DefRange
	}
	s.Parameters = values(attrs)
	s.Ranges.Parameters = make(map[string]hcl.Range, len(attrs))
	for k, a := range attrs {
		s.Ranges.Parameters[k] = a.ValueRange
	}
	params, problems := checkParams(s.Parameters)
	for _, p := range problems {
		diags = append(diags, hclutil.Error(attrs[p.Key].ValueRange, p.Message, ""))
	}
	for _, k := range UnknownParams(s.Parameters) {
		diags = append(diags, hclutil.Warning(attrs[k].NameRange, fmt.Sprintf("unknown parameter %q%s", k, suggestion(k, KnownParams)),
			"Saddlebag's parameters are "+hclutil.And(KnownParams)+"; others are passed to the plugin and ignored"))
	}
	s.Params = params
	var mountFS string
	if m := s.MountOptions; m != nil && m.FSType != "" {
		if !slices.Contains(FSTypes, m.FSType) {
			diags = append(diags, hclutil.Error(m.FSTypeRange, fsTypeMessage("mount_options fs_type"), ""))
			return diags
		}
		mountFS = m.FSType
	}
	if len(problems) > 0 {
		return diags
	}
	fs, err := params.ResolveFSType(mountFS)
	if err != nil {
		// Both are valid, so they differ: the parameter is the odd one out.
		diags = append(diags, hclutil.Error(attrs[ParamFSType].ValueRange,
			fmt.Sprintf("fs_type %q differs from mount_options fs_type %q", params.FSType, mountFS),
			"give the file system in one place, or the same in both"))
		return diags
	}
	if fs == "xfs" {
		switch {
		case s.CapacityMin != 0 && s.CapacityMin < MinXFSBytes:
			diags = append(diags, hclutil.Error(s.Ranges.CapacityMin, "xfs needs a volume of at least 300MiB",
				`raise capacity_min to "300MiB" or more, or use fs_type = "ext4"`))
		case s.CapacityMin == 0 && s.CapacityMax != 0 && s.CapacityMax < MinXFSBytes:
			diags = append(diags, hclutil.Error(s.Ranges.CapacityMax, "xfs needs a volume of at least 300MiB",
				`raise capacity_max to "300MiB" or more, or use fs_type = "ext4"`))
		}
	}
	return diags
}

func values(m map[string]hclutil.Attr) map[string]string {
	out := make(map[string]string, len(m))
	for k, a := range m {
		out[k] = a.Value
	}
	return out
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
