package volspec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/shoenig/test/must"
)

// The examples of Nomad's CSI volume specification pages
// (testdata/nomad-docs, each verbatim from Nomad v1.11.3's website with a
// one-line header saying where from), one test case each. Four of them
// are not whole specs: two are fragments (a capability block, a
// topology_request block) and two leave out the capability block that
// Nomad's server requires ("must include at least one capability
// block"). Those are refused alone, as nomad volume create refuses them,
// and validate once completed with docHeader and docCapability.
func TestNomadDocumentationExamples(t *testing.T) {
	const docHeader = `id        = "ebs_prod_db1"
namespace = "default"
name      = "database"
type      = "csi"
plugin_id = "ebs-prod"
`
	const docCapability = `
capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}
`
	type check func(t *testing.T, s *Spec, diags hcl.Diagnostics)
	warnings := func(want ...string) check {
		return func(t *testing.T, s *Spec, diags hcl.Diagnostics) {
			var got []string
			for _, d := range diags {
				got = append(got, d.Summary)
			}
			must.Eq(t, len(want), len(got), must.Sprintf("%v", diags))
			for i := range want {
				must.StrContains(t, got[i], want[i])
			}
		}
	}
	cases := []struct {
		file string
		// alone is the one error of the file on its own; "" when it is
		// a whole spec that validates.
		alone        string
		aloneAt      [2]int
		prefix, then string // completes a fragment
		check        check
	}{
		{file: "index-1.hcl", check: func(t *testing.T, s *Spec, diags hcl.Diagnostics) {
			warnings(`unknown parameter "skuname"`)(t, s, diags)
			must.Eq(t, "ebs_prod_db1", s.ID)
			must.Eq(t, "default", s.Namespace)
			must.Eq(t, "snap-12345", s.SnapshotID)
			must.Eq(t, int64(200e9), s.CapacityMax) // humanize, as Nomad: G is 10^9
			must.Eq(t, int64(100e9), s.CapacityMin)
			must.Len(t, 2, s.Capabilities)
			must.Eq(t, "single-node-reader-only", s.Capabilities[0].AccessMode)
			must.Eq(t, 11, s.Capabilities[0].DefRange.Start.Line)
			must.Eq(t, []string{"noatime"}, s.MountOptions.MountFlags)
			must.Len(t, 2, s.TopologyRequest.Required)
			must.Eq(t, map[string]string{"rack": "R2"}, s.TopologyRequest.Required[0].Segments)
			must.Eq(t, map[string]string{"rack": "R1", "zone": "us-east-1a"}, s.TopologyRequest.Required[1].Segments)
			must.Eq(t, 29, s.TopologyRequest.Required[1].DefRange.Start.Line)
			must.Eq(t, map[string]string{"rack": "R1", "zone": "us-east-1a"}, s.TopologyRequest.Preferred[0].Segments)
			must.Eq(t, map[string]string{"example_secret": "xyzzy"}, s.Secrets)
			must.Eq(t, map[string]string{"skuname": "Premium_LRS"}, s.Parameters)
			must.Eq(t, Params{Replicas: 2, MinInSync: 1}, s.Params)
		}},
		{file: "csi-1.hcl", check: func(t *testing.T, s *Spec, diags hcl.Diagnostics) {
			warnings("external_id is ignored by nomad volume create", `unknown parameter "skuname"`, "context is ignored by nomad volume create")(t, s, diags)
			must.Eq(t, 5, diags[0].Subject.Start.Line)
			must.Eq(t, "ebs-prod", s.PluginID)
			must.Eq(t, int64(0), s.CapacityMin)
			must.Len(t, 2, s.TopologyRequest.Required)
			must.Nil(t, s.TopologyRequest.Preferred)
		}},
		{file: "capability-1.hcl", check: func(t *testing.T, s *Spec, diags hcl.Diagnostics) {
			warnings()(t, s, diags)
			must.Eq(t, []Capability{{AccessMode: "single-node-reader-only", AttachmentMode: "file-system", DefRange: s.Capabilities[0].DefRange}}, s.Capabilities)
		}},
		{file: "capability-2.hcl", alone: "id is missing", aloneAt: [2]int{1, 1}, prefix: docHeader, check: func(t *testing.T, s *Spec, diags hcl.Diagnostics) {
			warnings()(t, s, diags)
			must.Len(t, 2, s.Capabilities)
			must.Eq(t, "single-node-writer", s.Capabilities[1].AccessMode)
		}},
		{file: "mount_options-1.hcl", alone: "no capability block", aloneAt: [2]int{1, 1}, then: docCapability, check: func(t *testing.T, s *Spec, diags hcl.Diagnostics) {
			warnings()(t, s, diags)
			must.Eq(t, "ext4", s.MountOptions.FSType)
			must.Eq(t, 11, s.MountOptions.FSTypeRange.Start.Line)
			must.Eq(t, []string{"noatime"}, s.MountOptions.MountFlags)
		}},
		{file: "topology_request-1.hcl", alone: "no capability block", aloneAt: [2]int{1, 1}, then: docCapability, check: func(t *testing.T, s *Spec, diags hcl.Diagnostics) {
			warnings()(t, s, diags)
			must.Eq(t, map[string]string{"rack": "R2"}, s.TopologyRequest.Required[0].Segments)
			must.Eq(t, map[string]string{"rack": "R1", "zone": "us-east-1a"}, s.TopologyRequest.Required[1].Segments)
			must.Eq(t, map[string]string{"rack": "R1", "zone": "us-east-1a"}, s.TopologyRequest.Preferred[0].Segments)
		}},
		{file: "topology_request-2.hcl", alone: "id is missing", aloneAt: [2]int{1, 1}, prefix: docHeader, then: docCapability, check: func(t *testing.T, s *Spec, diags hcl.Diagnostics) {
			warnings()(t, s, diags)
			must.Eq(t, []map[string]string{{"rack": "R1", "zone": "us-east-1a"}, {"rack": "R2", "zone": "us-east-1a"}},
				[]map[string]string{s.TopologyRequest.Required[0].Segments, s.TopologyRequest.Required[1].Segments})
		}},
	}
	files, err := filepath.Glob("testdata/nomad-docs/*.hcl")
	must.NoError(t, err)
	must.Len(t, len(cases), files, must.Sprint("every example has a case"))
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join("testdata/nomad-docs", c.file))
			must.NoError(t, err)
			s, diags := Parse(c.file, src)
			if c.alone != "" {
				must.Nil(t, s)
				errs := diags.Errs()
				must.SliceNotEmpty(t, errs)
				must.StrContains(t, errs[0].Error(), c.alone)
				d := diags[0]
				must.Eq(t, c.aloneAt, [2]int{d.Subject.Start.Line, d.Subject.Start.Column})
				// Completed, it validates.
				s, diags = Parse(c.file, []byte(c.prefix+string(src)+c.then))
			}
			must.False(t, diags.HasErrors(), must.Sprintf("%v", diags))
			must.NotNil(t, s)
			c.check(t, s, diags)
			for _, d := range diags {
				must.Eq(t, c.file, d.Subject.Filename)
				must.Positive(t, d.Subject.Start.Line)
			}
		})
	}
}

// The form HCL 2 cannot read, topology { segments { rack = "R1" } } on
// one line, is what Nomad's documentation writes; it reads as Nomad
// reads it and nothing is said about it.
func TestOneLineSegmentsNeedNoRewrite(t *testing.T) {
	src, err := os.ReadFile("testdata/nomad-docs/index-1.hcl")
	must.NoError(t, err)
	must.StrContains(t, string(src), `topology { segments { "rack" = "R2" } }`)
	_, diags := Parse("index.hcl", src)
	must.False(t, diags.HasErrors())
	must.StrNotContains(t, diags.Error(), "segments")
	must.False(t, strings.Contains(diags.Error(), "HCL"))
}
