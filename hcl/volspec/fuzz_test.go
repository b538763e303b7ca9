package volspec

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// FuzzParseVolumeSpec: no input panics, a nil Spec always comes with an
// error, a Spec never does, and a valid Spec holds what the checks
// promise. Seeds: the examples, plus testdata/fuzz/FuzzParseVolumeSpec.
func FuzzParseVolumeSpec(f *testing.F) {
	files, _ := filepath.Glob("../../jobs/examples/volume-*.hcl")
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
