package volspec

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/shoenig/test/must"
)

// valid is a complete spec; the bad cases below are edits of it, so each
// test changes one thing and the line numbers stay easy to read.
const valid = `id        = "pg"
name      = "pg"
type      = "csi"
plugin_id = "saddlebag"

capacity_min = "10GiB"
capacity_max = "20GiB"

capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}

parameters {
  replicas = 2
  fs_type  = "ext4"
}
`

func TestValidSpec(t *testing.T) {
	t.Parallel()
	s, diags := Parse("pg.hcl", []byte(valid))
	must.SliceEmpty(t, diags)
	must.NotNil(t, s)
	must.Eq(t, "pg", s.ID)
	must.Eq(t, "csi", s.Type)
	must.Eq(t, "saddlebag", s.PluginID)
	must.Eq(t, int64(10<<30), s.CapacityMin)
	must.Eq(t, int64(20<<30), s.CapacityMax)
	must.Len(t, 1, s.Capabilities)
	must.Eq(t, "single-node-writer", s.Capabilities[0].AccessMode)
	must.Eq(t, "file-system", s.Capabilities[0].AttachmentMode)
	must.Eq(t, 9, s.Capabilities[0].DefRange.Start.Line)
	must.Eq(t, map[string]string{"replicas": "2", "fs_type": "ext4"}, s.Parameters)
	must.Eq(t, Params{Replicas: 2, FSType: "ext4", MinInSync: 1}, s.Params)
	// Ranges point at the values, for checks a caller adds later.
	must.Eq(t, 15, s.Ranges.Parameters["replicas"].Start.Line)
	must.Eq(t, 14, s.Ranges.Parameters["replicas"].Start.Column)
	must.Eq(t, 4, s.Ranges.PluginID.Start.Line)
}

// Each problem is reported at the line and column it is about, with what
// would be valid. The acceptance cases of issue 6 come first.
func TestProblemsPointAtTheirPosition(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		from, to  string // edit of valid
		line, col int
		summary   string // substring of the one error expected
	}{
		{"missing plugin_id", `plugin_id = "saddlebag"`, ``, 1, 1, "plugin_id is missing"},
		{"capacity_min larger than capacity_max", `capacity_min = "10GiB"`, `capacity_min = "30GiB"`, 6, 16, "capacity_min (30GiB) is larger than capacity_max (20GiB)"},
		{"replicas = 0", `replicas = 2`, `replicas = 0`, 15, 14, "replicas must be a whole number from 1 to 5"},
		{"unknown access_mode", `"single-node-writer"`, `"single-node-writter"`, 10, 21, `unknown access_mode "single-node-writter"`},
		{"syntax error", `replicas = 2`, `replicas = = 2`, 15, 14, "Unknown token"},
		{"syntax error: unterminated string", `type      = "csi"`, `type      = "csi`, 3, 17, "literal not terminated"},
		{"syntax error: unclosed block", "  fs_type  = \"ext4\"\n}", `  fs_type  = "ext4"`, 17, 2, "object expected closing RBRACE got: EOF"},

		{"missing id", `id        = "pg"`, ``, 1, 1, "id is missing"},
		{"empty name", `name      = "pg"`, `name      = ""`, 2, 13, "name is empty"},
		{"host type", `type      = "csi"`, `type      = "host"`, 3, 13, `type "host" is not served by Saddlebag`},
		{"unknown argument in capability", `attachment_mode = "file-system"`, "attachment_mode = \"file-system\"\n  mode = 1", 12, 3, "invalid key mode"},
		{"bad capacity", `capacity_max = "20GiB"`, `capacity_max = "20 parsecs"`, 7, 16, `capacity_max "20 parsecs" is not a size`},
		{"capacity holds no 4 KiB block", "capacity_min = \"10GiB\"\ncapacity_max = \"20GiB\"", "capacity_min = \"4097\"\ncapacity_max = \"8000\"", 7, 16, "whole number of 4 KiB blocks"},
		{"multi-node access mode", `"single-node-writer"`, `"multi-node-multi-writer"`, 10, 21, "not served by Saddlebag"},
		{"unknown attachment_mode", `"file-system"`, `"filesystem"`, 11, 21, `unknown attachment_mode "filesystem"`},
		{"capability without access_mode", `  access_mode     = "single-node-writer"` + "\n", ``, 9, 1, "capability has no access_mode"},
		{"no capability", "capability {\n  access_mode     = \"single-node-writer\"\n  attachment_mode = \"file-system\"\n}\n", ``, 1, 1, "no capability block"},
		{"replicas too many", `replicas = 2`, `replicas = 6`, 15, 14, "replicas must be a whole number from 1 to 5"},
		{"replicas fraction", `replicas = 2`, `replicas = 2.5`, 15, 14, "replicas must be a whole number from 1 to 5"},
		{"fs_type", `fs_type  = "ext4"`, `fs_type  = "btrfs"`, 16, 14, "fs_type must be ext4 or xfs"},
		{"min_in_sync above replicas", `fs_type  = "ext4"`, `min_in_sync = 3`, 16, 17, "min_in_sync must be a whole number from 1 to replicas (2)"},
		{"spread not a label", `fs_type  = "ext4"`, `spread = "rack zone"`, 16, 12, "spread must name a node label"},
		{"snapshot and clone", `plugin_id = "saddlebag"`, "plugin_id = \"saddlebag\"\nsnapshot_id = \"s1\"\nclone_id = \"v1\"", 6, 12, "snapshot_id and clone_id are both set"},
		{"fs_type differs from mount_options", "parameters {", "mount_options {\n  fs_type = \"xfs\"\n}\nparameters {", 19, 14, `fs_type "ext4" differs from mount_options fs_type "xfs"`},
		{"mount_options fs_type", "parameters {", "mount_options {\n  fs_type = \"zfs\"\n}\nparameters {", 15, 13, "mount_options fs_type must be ext4 or xfs"},
		{"xfs too small", "capacity_min = \"10GiB\"\ncapacity_max = \"20GiB\"", "capacity_min = \"100MiB\"\ncapacity_max = \"1GiB\"", 6, 16, "xfs needs a volume of at least 300MiB"},
		{"unknown key in mount_options", "parameters {", "mount_options {\n  fstype = \"ext4\"\n}\nparameters {", 15, 3, "invalid key fstype"},
		{"variables are not allowed", `name      = "pg"`, `name      = var.name`, 2, 13, "no variables"},
		{"functions are not allowed", `name      = "pg"`, `name      = upper("pg")`, 2, 13, "no variables"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			src := valid
			if c.name == "xfs too small" {
				src = strings.Replace(src, `fs_type  = "ext4"`, `fs_type  = "xfs"`, 1)
			}
			must.StrContains(t, src, c.from)
			src = strings.Replace(src, c.from, c.to, 1)
			s, diags := Parse("v.hcl", []byte(src))
			must.Nil(t, s)
			must.True(t, diags.HasErrors())
			errs := diags.Errs()
			must.Len(t, 1, errs, must.Sprintf("diags: %v", diags))
			d := diags[0]
			for _, x := range diags {
				if x.Severity == hcl.DiagError {
					d = x
				}
			}
			must.NotNil(t, d.Subject)
			must.Eq(t, "v.hcl", d.Subject.Filename)
			must.Eq(t, c.line, d.Subject.Start.Line, must.Sprintf("%s", d.Error()))
			must.Eq(t, c.col, d.Subject.Start.Column, must.Sprintf("%s", d.Error()))
			must.StrContains(t, d.Summary+"; "+d.Detail, c.summary)
		})
	}
}

// Every problem is reported, not just the first.
func TestEveryProblemReported(t *testing.T) {
	t.Parallel()
	src := strings.NewReplacer(`plugin_id = "saddlebag"`, ``, `replicas = 2`, `replicas = 0`, `"file-system"`, `"file"`).Replace(valid)
	_, diags := Parse("v.hcl", []byte(src))
	must.Len(t, 3, diags.Errs(), must.Sprintf("%v", diags))
	// Ordered by position.
	must.Eq(t, 1, diags[0].Subject.Start.Line)
	must.Eq(t, 11, diags[1].Subject.Start.Line)
	must.Eq(t, 15, diags[2].Subject.Start.Line)
}

// An unknown parameter is a warning naming the known ones, not an error:
// Nomad passes it on to the plugin.
func TestUnknownParameterWarns(t *testing.T) {
	t.Parallel()
	src := strings.Replace(valid, `replicas = 2`, "replicas = 2\n  replica = 3", 1)
	s, diags := Parse("v.hcl", []byte(src))
	must.NotNil(t, s)
	must.False(t, diags.HasErrors())
	must.Len(t, 1, diags)
	must.Eq(t, hcl.DiagWarning, diags[0].Severity)
	must.Eq(t, 16, diags[0].Subject.Start.Line)
	must.Eq(t, 3, diags[0].Subject.Start.Column)
	must.StrContains(t, diags[0].Summary, `unknown parameter "replica" (did you mean "replicas"?)`)
	must.StrContains(t, diags[0].Detail, "replicas, fs_type, spread, min_in_sync and encrypted")
	must.Eq(t, "3", s.Parameters["replica"])
}

// Every way Nomad's CLI reads a topology's segments: a block (on one
// line or several, keys quoted or not), an attribute holding an object;
// two segments maps in one topology are two topologies; a topology
// without segments is dropped, with a warning; anything else in a
// topology is an error, as Nomad refuses it.
func TestTopologySegmentsForms(t *testing.T) {
	t.Parallel()
	base := valid + "topology_request {\n  required {\n    topology {\n%s\n    }\n  }\n}\n"
	for _, c := range []struct {
		name, body string
		want       []map[string]string
		err, warn  string
	}{
		{name: "block", body: "segments {\n rack = \"r1\"\n zone = \"a\"\n}", want: []map[string]string{{"rack": "r1", "zone": "a"}}},
		{name: "one-line block, quoted keys", body: `segments { "rack" = "r1", "zone" = "a" }`, want: []map[string]string{{"rack": "r1", "zone": "a"}}},
		{name: "attribute", body: `segments = { rack = "r1", "zone" = "a" }`, want: []map[string]string{{"rack": "r1", "zone": "a"}}},
		{name: "number value", body: `segments { rack = 1 }`, want: []map[string]string{{"rack": "1"}}},
		{name: "two segments are two topologies", body: "segments = { rack = \"r1\" }\nsegments {\n zone = \"a\"\n}", want: []map[string]string{{"rack": "r1"}, {"zone": "a"}}},
		{name: "other argument", body: `rack = "r1"`, err: "bad topology_request block"},
		{name: "empty", body: ``, warn: "topology_request asks for nothing"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s, diags := Parse("v.hcl", []byte(strings.Replace(base, "%s", c.body, 1)))
			if c.err != "" {
				must.True(t, diags.HasErrors())
				must.StrContains(t, diags.Error(), c.err)
				must.Eq(t, 21, diags[0].Subject.Start.Line)
				return
			}
			must.False(t, diags.HasErrors(), must.Sprintf("%v", diags))
			if c.warn != "" {
				must.StrContains(t, diags.Error(), c.warn)
				must.Nil(t, s.TopologyRequest)
				return
			}
			must.SliceEmpty(t, diags)
			var got []map[string]string
			for _, tp := range s.TopologyRequest.Required {
				got = append(got, tp.Segments)
			}
			must.Eq(t, c.want, got)
		})
	}
}

// Settings Nomad reads and then ignores are warnings, not errors: the
// file is one nomad volume create accepts.
func TestIgnoredByNomadWarns(t *testing.T) {
	for _, c := range []struct {
		name, edit string
		line, col  int
		warn       string
	}{
		{"unknown argument", "plugn_id = 1\n", 1, 1, `unknown argument "plugn_id" (did you mean "plugin_id"?)`},
		{"external_id", "external_id = \"vol-1\"\n", 1, 1, "external_id is ignored by nomad volume create"},
		{"second mount_options", "mount_options {\n  fs_type = \"ext4\"\n}\nmount_options {\n  fs_type = \"zfs\"\n}\n", 4, 1, "a second mount_options block"},
		{"id twice", "id = \"other\"\n", 1, 1, "id is set twice"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, diags := Parse("v.hcl", []byte(c.edit+valid))
			must.False(t, diags.HasErrors(), must.Sprintf("%v", diags))
			must.NotNil(t, s)
			must.Len(t, 1, diags, must.Sprintf("%v", diags))
			must.Eq(t, hcl.DiagWarning, diags[0].Severity)
			must.StrContains(t, diags[0].Summary, c.warn)
			must.Eq(t, c.line, diags[0].Subject.Start.Line)
			must.Eq(t, c.col, diags[0].Subject.Start.Column)
		})
	}
	// Nomad keeps the last of a repeated setting.
	s, _ := Parse("v.hcl", []byte(valid+"id = \"last\"\n"))
	must.Eq(t, "last", s.ID)
}

// A JSON spec is read whatever the file is called, as Nomad's CLI decides
// by the first character.
func TestJSONWhateverTheName(t *testing.T) {
	src := `{"id": "a", "name": "a", "type": "csi", "plugin_id": "p",
  "capability": [{"access_mode": "single-node-writer", "attachment_mode": "file-system"}]}`
	s, diags := Parse("spec.hcl", []byte(src))
	must.False(t, diags.HasErrors(), must.Sprintf("%v", diags))
	must.Eq(t, "a", s.ID)
}

// A job file or an agent config gets one line saying what it looks like.
func TestLookAlikes(t *testing.T) {
	for _, c := range []struct{ name, src, want string }{
		{"job, HCL 2", "job \"web\" {\n  group \"g\" {\n    count = var.n\n  }\n}\n", `a Nomad job file (job "web")`},
		{"job, HCL 1", "job \"web\" {\n  datacenters = [\"dc1\"]\n}\n", `a Nomad job file (job "web")`},
		{"nomad agent", "data_dir = \"/var/lib/nomad\"\nserver {\n  enabled = true\n}\n", "a Nomad agent config"},
		{"consul agent", "node_name = \"n1\"\ndata_dir = \"/d\"\nbootstrap_expect = 1\n", "a Consul agent config"},
		{"saddlebag agent", "name = \"n1\"\ndata_dir = \"/d\"\ncsi_endpoint = \"unix:///c.sock\"\n", "a Saddlebag agent config"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, diags := Parse("f.hcl", []byte(c.src))
			must.Nil(t, s)
			must.Len(t, 1, diags, must.Sprintf("%v", diags))
			must.StrContains(t, diags[0].Summary, c.want)
			must.Eq(t, 1, diags[0].Subject.Start.Line)
		})
	}
	// A broken volume spec is not taken for anything else.
	_, diags := Parse("v.hcl", []byte("data_dir = \"/x\"\n"+valid))
	must.StrNotContains(t, diags.Error(), "looks like")
}

// Parameters and secrets reach the plugin as the strings Nomad would
// send: numbers as written, bools as "1"/"0" (mapstructure.WeakDecode).
// (Saddlebag's whole-number parameters must be written in plain digits:
// TestParameterLiterals.)
func TestParameterValuesAsNomadSends(t *testing.T) {
	t.Parallel()
	src := strings.Replace(valid, `replicas = 2`, "replicas = 3\n  min_in_sync = \"2\"\n  compress = true\n  dedupe = false", 1) +
		"secrets {\n  token = 42\n}\n"
	s, diags := Parse("v.hcl", []byte(src))
	must.False(t, diags.HasErrors(), must.Sprintf("%v", diags))
	must.Eq(t, map[string]string{"replicas": "3", "min_in_sync": "2", "compress": "1", "dedupe": "0", "fs_type": "ext4"}, s.Parameters)
	must.Eq(t, map[string]string{"token": "42"}, s.Secrets)
	must.Eq(t, 3, s.Params.Replicas)
	must.Eq(t, 2, s.Params.MinInSync)

	// An unknown parameter may be written any way: it is passed on.
	src = strings.Replace(valid, `replicas = 2`, "replicas = 2\n  ratio = 1e0\n  level = 02", 1)
	s, diags = Parse("v.hcl", []byte(src))
	must.False(t, diags.HasErrors(), must.Sprintf("%v", diags))
	must.Eq(t, "1", s.Parameters["ratio"])
	must.Eq(t, "2", s.Parameters["level"])
}

// Saddlebag's parameters written as a value of another type are errors
// with the valid form, although the strings Nomad sends for them ("1",
// "2") would pass: replicas = true arrives as "1", 1e0 and 01 as "1".
func TestParameterLiterals(t *testing.T) {
	t.Parallel()
	cases := []struct {
		from, to string
		col      int
		want     string // substring of the one error; "" for valid
	}{
		{`replicas = 2`, `replicas = true`, 14, "replicas must be a whole number from 1 to 5 in plain digits, like replicas = 2: true is a bool, not a number"},
		{`replicas = 2`, `replicas = false`, 14, "false is a bool, not a number"},
		{`replicas = 2`, `replicas = 1e0`, 14, "like replicas = 2: 1e0 is a number in another form"},
		{`replicas = 2`, `replicas = 2.0`, 14, "like replicas = 2: 2.0 is a number in another form"},
		{`replicas = 2`, `replicas = 02`, 14, "like replicas = 2: 02 is a number in another form"},
		{`replicas = 2`, `replicas = "02"`, 14, `replicas must be a whole number from 1 to 5 in plain digits, like "2"`},
		{`replicas = 2`, `replicas = "1e0"`, 14, `replicas must be a whole number from 1 to 5 in plain digits, like "2"`},
		{`replicas = 2`, `replicas = -1`, 14, "-1 is a number in another form"},
		{`replicas = 2`, `replicas = "2"`, 0, ""},
		{`replicas = 2`, `replicas = 3`, 0, ""},
		{`fs_type  = "ext4"`, `min_in_sync = true`, 17, "min_in_sync must be a whole number from 1 to replicas in plain digits, like min_in_sync = 2: true is a bool"},
		{`fs_type  = "ext4"`, `min_in_sync = 1e0`, 17, "1e0 is a number in another form"},
		{`fs_type  = "ext4"`, `min_in_sync = "01"`, 17, "min_in_sync must be a whole number from 1 to replicas in plain digits"},
		{`fs_type  = "ext4"`, `min_in_sync = 2`, 0, ""},
		{`fs_type  = "ext4"`, `encrypted = 1`, 15, "encrypted must be true or false, like encrypted = true: 1 is not a bool"},
		{`fs_type  = "ext4"`, `encrypted = false`, 0, ""},
		{`fs_type  = "ext4"`, `encrypted = "false"`, 0, ""},
	}
	for _, c := range cases {
		t.Run(c.to, func(t *testing.T) {
			t.Parallel()
			src := strings.Replace(valid, c.from, c.to, 1)
			s, diags := Parse("v.hcl", []byte(src))
			if c.want == "" {
				must.False(t, diags.HasErrors(), must.Sprintf("%v", diags))
				must.NotNil(t, s)
				return
			}
			must.Nil(t, s)
			errs := diags.Errs()
			must.Len(t, 1, errs, must.Sprintf("%v", diags))
			d := errs[0].(*hcl.Diagnostic)
			must.Eq(t, c.col, d.Subject.Start.Column)
			must.StrContains(t, d.Summary, c.want)
		})
	}
	// In JSON too.
	json := `{"id": "pg", "name": "pg", "type": "csi", "plugin_id": "saddlebag",
  "capability": [{"access_mode": "single-node-writer", "attachment_mode": "file-system"}],
  "parameters": {"replicas": true}}`
	_, diags := Parse("v.json", []byte(json))
	must.Len(t, 1, diags.Errs(), must.Sprintf("%v", diags))
	must.StrContains(t, diags.Errs()[0].(*hcl.Diagnostic).Summary, "true is a bool")
	_, diags = Parse("v.json", []byte(strings.Replace(json, "true", "1e0", 1)))
	must.Len(t, 1, diags.Errs(), must.Sprintf("%v", diags))
	must.StrContains(t, diags.Errs()[0].(*hcl.Diagnostic).Summary, "1e0 is a number in another form")
}

// A .json spec is read as HCL's JSON syntax, as Nomad accepts JSON.
func TestJSONSpec(t *testing.T) {
	t.Parallel()
	src := `{
  "id": "pg", "name": "pg", "type": "csi", "plugin_id": "saddlebag",
  "capacity_min": "1GiB",
  "capability": [{"access_mode": "single-node-writer", "attachment_mode": "block-device"}],
  "parameters": {"replicas": "0"}
}`
	_, diags := Parse("v.json", []byte(src))
	must.Len(t, 1, diags.Errs(), must.Sprintf("%v", diags))
	must.Eq(t, 5, diags[0].Subject.Start.Line)
	must.StrContains(t, diags[0].Summary, "replicas must be a whole number from 1 to 5")

	s, diags := Parse("v.json", []byte(strings.Replace(src, `"0"`, `"3"`, 1)))
	must.False(t, diags.HasErrors(), must.Sprintf("%v", diags))
	must.Eq(t, 3, s.Params.Replicas)
	must.Eq(t, "block-device", s.Capabilities[0].AttachmentMode)
}

// The example specs shipped in jobs/examples are valid.
func TestExampleSpecsValidate(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../../jobs/examples/volume-*.hcl")
	must.NoError(t, err)
	must.SliceNotEmpty(t, files)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			s, diags := ParseFile(f)
			must.SliceEmpty(t, diags)
			must.NotNil(t, s)
		})
	}
	s, _ := ParseFile("../../jobs/examples/volume-postgres.hcl")
	must.Eq(t, Params{Replicas: 2, FSType: "ext4", Spread: "rack", MinInSync: 1}, s.Params)
	must.Eq(t, int64(20<<30), s.CapacityMin)
}

func TestParseFileMissing(t *testing.T) {
	t.Parallel()
	s, diags := ParseFile(filepath.Join(t.TempDir(), "nope.hcl"))
	must.Nil(t, s)
	must.True(t, diags.HasErrors())
	must.StrContains(t, diags.Error(), "cannot read volume spec")
}

// encrypted = true needs the passphrase secret and the secret needs
// encrypted = true; each problem is one error at the field at fault
// (line and column), and no message quotes the passphrase.
func TestEncryptionSettings(t *testing.T) {
	t.Parallel()
	const secret = "a-passphrase-never-printed"
	for _, c := range []struct {
		name, params, secrets string
		encrypted             bool
		err                   string
		line, col             int
	}{
		{name: "encrypted with passphrase", params: `encrypted = "true"`, secrets: `encryption_passphrase = "` + secret + `"`, encrypted: true},
		{name: "HCL bool", params: `encrypted = true`, secrets: `encryption_passphrase = "` + secret + `"`, encrypted: true},
		{name: "plain", params: `encrypted = false`},
		{name: "encrypted without secrets", params: `encrypted = true`, err: "encrypted = true needs the secret encryption_passphrase", line: 17, col: 15},
		{name: "encrypted, other secret", params: `encrypted = "true"`, secrets: `token = "x"`, err: "needs the secret encryption_passphrase", line: 17, col: 15},
		{name: "secret without encrypted", secrets: `encryption_passphrase = "` + secret + `"`, err: "encrypted is not true", line: 20, col: 27},
		{name: "secret with encrypted false", params: `encrypted = "false"`, secrets: `encryption_passphrase = "` + secret + `"`, err: "encrypted is not true", line: 20, col: 27},
		{name: "short passphrase", params: `encrypted = true`, secrets: `encryption_passphrase = "short"`, err: "at least 8 bytes", line: 20, col: 27},
		{name: "bad value", params: `encrypted = "yes"`, err: "encrypted must be true or false", line: 17, col: 15},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			src := strings.Replace(valid, `fs_type  = "ext4"`, "fs_type  = \"ext4\"\n  "+c.params, 1)
			src += "secrets {\n  " + c.secrets + "\n}\n"
			s, diags := Parse("v.hcl", []byte(src))
			if c.err == "" {
				must.False(t, diags.HasErrors(), must.Sprintf("%v", diags))
				must.Eq(t, c.encrypted, s.Params.Encrypted)
				return
			}
			must.Len(t, 1, diags.Errs(), must.Sprintf("%v", diags))
			must.StrContains(t, diags.Error(), c.err)
			must.StrNotContains(t, diags.Error(), secret)
			must.StrNotContains(t, diags.Error(), "short\"")
			must.Eq(t, c.line, diags[0].Subject.Start.Line, must.Sprintf("%v", diags))
			must.Eq(t, c.col, diags[0].Subject.Start.Column, must.Sprintf("%v", diags))
		})
	}
}
