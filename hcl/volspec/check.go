package volspec

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/saddlebag/saddlebag/hcl/internal/hclutil"
	"github.com/saddlebag/saddlebag/internal/units"
)

// check turns the decoded file into a Spec, reporting every semantic
// problem at the range it is about. missing is where absent settings are
// reported: the start of the file, as HCL itself does; src is the file,
// for how values were written.
func check(raw *rawSpec, missing hcl.Range, src []byte) (*Spec, hcl.Diagnostics) {
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

	capDiags, capOK := checkCapacity(s, raw)
	diags = append(diags, capDiags...)
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
	fsType, paramDiags := checkParameters(s, raw, src)
	diags = append(diags, paramDiags...)
	if capOK {
		diags = append(diags, checkSize(s, fsType)...)
	}
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

// checkCapacity reads capacity_min and capacity_max, as Nomad reads them
// (internal/units); ok is false when either is not a size.
func checkCapacity(s *Spec, raw *rawSpec) (diags hcl.Diagnostics, ok bool) {
	parse := func(name string, v *string, at hcl.Range) (int64, bool) {
		if v == nil || *v == "" { // Nomad reads "" as not set
			return 0, true
		}
		n, err := units.ParseBytes(*v)
		switch {
		case errors.Is(err, units.ErrTooLarge):
			diags = append(diags, hclutil.Error(at, fmt.Sprintf("%s %q is too large", name, *v), "a volume is at most "+units.FormatBytes(units.MaxBytes)))
			return 0, false
		case err != nil:
			diags = append(diags, hclutil.Error(at, fmt.Sprintf("%s %q is not a size", name, *v), "write "+units.Forms))
			return 0, false
		case n == 0:
			diags = append(diags, hclutil.Error(at, fmt.Sprintf("%s %q is zero", name, *v), `write a size larger than zero, like "10GiB", or leave it out`))
			return 0, false
		}
		return n, true
	}
	lo, okLo := parse("capacity_min", raw.CapacityMin, raw.CapacityMinRange)
	hi, okHi := parse("capacity_max", raw.CapacityMax, raw.CapacityMaxRange)
	s.CapacityMin, s.CapacityMax = lo, hi
	return diags, okLo && okHi
}

// checkSize picks the volume's size from its capacity range with the
// rule CreateVolume follows (Size), for the file system it will hold:
// fsType when a capability mounts it, none when every capability is a
// raw block device, and none when the file system is unknown (its
// problem is reported already).
func checkSize(s *Spec, fsType string) hcl.Diagnostics {
	if !slices.ContainsFunc(s.Capabilities, func(c Capability) bool { return c.AttachmentMode == "file-system" }) {
		fsType = ""
	}
	size, err := Size(s.CapacityMin, s.CapacityMax, fsType)
	var se *SizeError
	if errors.As(err, &se) {
		at := s.Ranges.CapacityMin
		if se.Field == "capacity_max" {
			at = s.Ranges.CapacityMax
		}
		return hcl.Diagnostics{hclutil.Error(at, se.Summary, se.Detail)}
	}
	s.Size = size
	return nil
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
// Nomad passes them on unchanged. It returns the volume's file system,
// "" when the parameters have a problem.
func checkParameters(s *Spec, raw *rawSpec, src []byte) (string, hcl.Diagnostics) {
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
	problems = checkLiterals(problems, attrs, src)
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
			return "", diags
		}
		mountFS = m.FSType
	}
	if len(problems) > 0 {
		return "", diags
	}
	fs, err := params.ResolveFSType(mountFS)
	if err != nil {
		// Both are valid, so they differ: the parameter is the odd one out.
		diags = append(diags, hclutil.Error(attrs[ParamFSType].ValueRange,
			fmt.Sprintf("fs_type %q differs from mount_options fs_type %q", params.FSType, mountFS),
			"give the file system in one place, or the same in both"))
		return "", diags
	}
	return fs, diags
}

// checkLiterals adds to problems the parameters written as a value of
// the wrong type, which the strings Nomad sends no longer show: replicas
// = true arrives as "1", replicas = 1e0 or 02 as "1" or "2", encrypted =
// 1 as "1". A parameter's own problem replaces one checkParams found.
func checkLiterals(problems []ParamProblem, attrs map[string]hclutil.Attr, src []byte) []ParamProblem {
	for _, key := range KnownParams {
		a, ok := attrs[key]
		if !ok {
			continue
		}
		msg := literalProblem(key, sourceText(src, a.ValueRange))
		if msg == "" {
			continue
		}
		problems = slices.DeleteFunc(problems, func(p ParamProblem) bool { return p.Key == key })
		problems = append(problems, ParamProblem{Key: key, Value: a.Value, Message: msg})
	}
	return problems
}

// literalProblem says what is wrong with how parameter key's value was
// written, text being its source ("" when nothing is, or when it is a
// quoted string, which checkParams reads as it is).
func literalProblem(key, text string) string {
	if text == "" || strings.HasPrefix(text, `"`) {
		return ""
	}
	switch key {
	case ParamReplicas, ParamMinInSync:
		if _, ok := wholeNumber(text); ok {
			return ""
		}
		upper := fmt.Sprint(MaxReplicas)
		if key == ParamMinInSync {
			upper = "replicas"
		}
		what := "a number in another form"
		if text == "true" || text == "false" {
			what = "a bool, not a number"
		}
		return fmt.Sprintf("%s must be a whole number from 1 to %s in plain digits, like %s = 2: %s is %s", key, upper, key, text, what)
	case ParamEncrypted:
		if text == "true" || text == "false" {
			return ""
		}
		return fmt.Sprintf("encrypted must be true or false, like encrypted = true: %s is not a bool", text)
	}
	return ""
}

// sourceText is the text of r in src, "" when r is not in it.
func sourceText(src []byte, r hcl.Range) string {
	if r.Start.Byte < 0 || r.End.Byte > len(src) || r.Start.Byte >= r.End.Byte {
		return ""
	}
	return strings.TrimSpace(string(src[r.Start.Byte:r.End.Byte]))
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
