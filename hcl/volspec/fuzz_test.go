package volspec

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/hashicorp/nomad/api"
)

// FuzzParseVolumeSpec: no input panics, a nil Spec always comes with an
// error, a Spec never does, and a valid Spec holds what the checks
// promise. Seeds: the examples, Nomad's documentation examples and
// testdata/nomad-forms, plus testdata/fuzz/FuzzParseVolumeSpec.
func FuzzParseVolumeSpec(f *testing.F) {
	files, _ := filepath.Glob("../../jobs/examples/volume-*.hcl")
	for _, glob := range []string{"testdata/nomad-docs/*.hcl", "testdata/nomad-forms/*"} {
		more, _ := filepath.Glob(glob)
		files = append(files, more...)
	}
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(filepath.Base(file), src)
	}
	f.Add("v.hcl", []byte(valid))
	f.Add("v.json", []byte(`{"id":"a","name":"a","type":"csi","plugin_id":"p","capability":[{"access_mode":"single-node-writer","attachment_mode":"file-system"}]}`))
	f.Fuzz(func(t *testing.T, name string, src []byte) {
		if filepath.Ext(name) != ".json" {
			name = "v.hcl"
		}
		s, diags := Parse(name, src)
		if s == nil && !diags.HasErrors() {
			t.Fatalf("nil Spec without an error: %v", diags)
		}
		if s != nil && diags.HasErrors() {
			t.Fatalf("a Spec with errors: %v", diags)
		}
		for _, d := range diags {
			if d.Summary == "" {
				t.Fatalf("diagnostic without a message: %#v", d)
			}
		}
		if s == nil {
			return
		}
		switch {
		case s.ID == "" || s.Name == "" || s.PluginID == "" || s.Type != "csi" || len(s.Capabilities) == 0:
			t.Fatalf("valid spec missing a required setting: %+v", s)
		case s.CapacityMin < 0 || s.CapacityMax < 0 || (s.CapacityMax != 0 && s.CapacityMin > s.CapacityMax):
			t.Fatalf("bad capacity range %d..%d", s.CapacityMin, s.CapacityMax)
		case s.Params.Replicas < MinReplicas || s.Params.Replicas > MaxReplicas ||
			s.Params.MinInSync < 1 || s.Params.MinInSync > s.Params.Replicas:
			t.Fatalf("bad params %+v", s.Params)
		}
		if p, err := ParseParams(s.Parameters); err != nil || p != s.Params {
			t.Fatalf("ParseParams(%v) = %+v, %v; Parse said %+v", s.Parameters, p, err, s.Params)
		}
		// The size CreateVolume would make is the one the spec reports,
		// whole blocks within the range, and the file system fits in it.
		var mountFS string
		if s.MountOptions != nil {
			mountFS = s.MountOptions.FSType
		}
		fs, err := s.Params.ResolveFSType(mountFS)
		if err != nil {
			t.Fatalf("a valid spec's file system does not resolve: %v", err)
		}
		if !slices.ContainsFunc(s.Capabilities, func(c Capability) bool { return c.AttachmentMode == "file-system" }) {
			fs = ""
		}
		size, err := Size(s.CapacityMin, s.CapacityMax, fs)
		switch {
		case err != nil || size != s.Size:
			t.Fatalf("Size(%d, %d, %q) = %d, %v; the spec says %d", s.CapacityMin, s.CapacityMax, fs, size, err, s.Size)
		case size%BlockSize != 0 || size < s.CapacityMin || s.CapacityMax != 0 && size > s.CapacityMax || size < MinSize(fs):
			t.Fatalf("size %d for range %d..%d and %q", size, s.CapacityMin, s.CapacityMax, fs)
		}
	})
}

// FuzzParseParams: no panic; either valid Params within their limits or a
// *ParamsError with at least one problem naming a known key.
func FuzzParseParams(f *testing.F) {
	f.Add("2", "ext4", "rack", "1")
	f.Add("0", "zfs", "", "9")
	f.Add("5", "xfs", "consul-x", "5")
	f.Fuzz(func(t *testing.T, replicas, fsType, spread, minInSync string) {
		m := map[string]string{"replicas": replicas, "fs_type": fsType, "spread": spread, "min_in_sync": minInSync}
		p, err := ParseParams(m)
		if err != nil {
			var perr *ParamsError
			if !errors.As(err, &perr) || len(perr.Problems) == 0 {
				t.Fatalf("error %v is not a *ParamsError with problems", err)
			}
			for _, pr := range perr.Problems {
				if _, ok := m[pr.Key]; !ok || pr.Message == "" {
					t.Fatalf("problem %+v", pr)
				}
			}
			return
		}
		if p.Replicas < 1 || p.Replicas > 5 || p.MinInSync < 1 || p.MinInSync > p.Replicas ||
			(p.FSType != "ext4" && p.FSType != "xfs") || p.Spread != spread {
			t.Fatalf("ParseParams(%v) = %+v", m, p)
		}
	})
}

// FuzzParseNomadHCL1 drives the HCL 1 path (nomad.go) with Nomad's forms:
// no input panics; every diagnostic points into the file (FILE:LINE,COL
// with a line of at least 1); and a valid Spec holds exactly what Nomad's
// decoding of the same file would send: the ID, name, plugin, capability
// modes, parameters, secrets and topologies built for the checks agree
// with the api.CSIVolume decoded the way Nomad's CLI decodes it. Seeds:
// Nomad's documentation examples and testdata/nomad-forms.
func FuzzParseNomadHCL1(f *testing.F) {
	for _, glob := range []string{"testdata/nomad-docs/*.hcl", "testdata/nomad-forms/*"} {
		files, _ := filepath.Glob(glob)
		for _, file := range files {
			src, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(src)
		}
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		const name = "f.hcl"
		s, diags := Parse(name, src)
		if (s == nil) != diags.HasErrors() {
			t.Fatalf("Spec %v with diags %v", s, diags)
		}
		for _, d := range diags {
			if d.Subject == nil || d.Subject.Filename != name || d.Subject.Start.Line < 1 || d.Subject.Start.Column < 1 {
				t.Fatalf("diagnostic without a position in the file: %#v", d)
			}
		}
		if s == nil {
			return
		}
		d, _ := parseNomad(name, src)
		if d == nil {
			t.Fatal("Parse accepted what parseNomad refused")
		}
		v := d.vol
		if s.ID != v.ID || s.Name != v.Name || s.PluginID != v.PluginID || s.Namespace != v.Namespace {
			t.Fatalf("Spec %q %q %q %q, Nomad %q %q %q %q", s.ID, s.Name, s.PluginID, s.Namespace, v.ID, v.Name, v.PluginID, v.Namespace)
		}
		if len(s.Capabilities) != len(v.RequestedCapabilities) {
			t.Fatalf("%d capabilities, Nomad %d", len(s.Capabilities), len(v.RequestedCapabilities))
		}
		for i, c := range s.Capabilities {
			if c.AccessMode != string(v.RequestedCapabilities[i].AccessMode) || c.AttachmentMode != string(v.RequestedCapabilities[i].AttachmentMode) {
				t.Fatalf("capability %d: %+v, Nomad %+v", i, c, v.RequestedCapabilities[i])
			}
		}
		if !maps.Equal(s.Parameters, v.Parameters) && len(s.Parameters)+len(v.Parameters) > 0 {
			t.Fatalf("parameters %v, Nomad %v", s.Parameters, v.Parameters)
		}
		if !maps.Equal(s.Secrets, v.Secrets) && len(s.Secrets)+len(v.Secrets) > 0 {
			t.Fatalf("secrets %v, Nomad %v", s.Secrets, v.Secrets)
		}
		segs := func(ts []Topology) (out []map[string]string) {
			for _, tp := range ts {
				out = append(out, tp.Segments)
			}
			return out
		}
		nomadSegs := func(ts []*api.CSITopology) (out []map[string]string) {
			for _, tp := range ts {
				out = append(out, tp.Segments)
			}
			return out
		}
		var req, pref, nreq, npref []map[string]string
		if s.TopologyRequest != nil {
			req, pref = segs(s.TopologyRequest.Required), segs(s.TopologyRequest.Preferred)
		}
		if v.RequestedTopologies != nil {
			nreq, npref = nomadSegs(v.RequestedTopologies.Required), nomadSegs(v.RequestedTopologies.Preferred)
		}
		if !reflect.DeepEqual(req, nreq) || !reflect.DeepEqual(pref, npref) {
			t.Fatalf("topologies %v / %v, Nomad %v / %v", req, pref, nreq, npref)
		}
	})
}
