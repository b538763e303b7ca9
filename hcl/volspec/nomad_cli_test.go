package volspec

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
)

// TestSameAsNomadCLI runs the real `nomad volume create` (the pinned
// binary, $SADDLEBAG_NOMAD_BIN, which make exports) on every spec in
// testdata and on what `nomad volume init` writes (which must validate),
// against a loopback HTTP server that records the volume the CLI sends.
// Where the CLI
// refuses a file, parseNomad must refuse it; where it sends a volume,
// parseNomad must decode the same one, and the parameters it sends read
// as the validator read them.
func TestSameAsNomadCLI(t *testing.T) {
	bin := os.Getenv("SADDLEBAG_NOMAD_BIN")
	if bin == "" {
		t.Skip("SADDLEBAG_NOMAD_BIN is not set (make test sets it to the pinned Nomad)")
	}
	var mu sync.Mutex
	var got *api.CSIVolumeCreateRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req api.CSIVolumeCreateRequest
		if err := json.Unmarshal(body, &req); err == nil && strings.HasPrefix(r.URL.Path, "/v1/volume/csi/") && strings.HasSuffix(r.URL.Path, "/create") {
			mu.Lock()
			got = &req
			mu.Unlock()
		}
		http.Error(w, "recorded", http.StatusTeapot)
	}))
	defer srv.Close()

	dir := t.TempDir()
	init := exec.Command(bin, "volume", "init", "-type", "csi")
	init.Dir = dir
	out, err := init.CombinedOutput()
	must.NoError(t, err, must.Sprint(string(out)))
	init = exec.Command(bin, "volume", "init", "-type", "csi", "-json")
	init.Dir = dir
	out, err = init.CombinedOutput()
	must.NoError(t, err, must.Sprint(string(out)))

	var files []string
	for _, glob := range []string{"testdata/nomad-docs/*.hcl", "testdata/nomad-forms/*", "../../jobs/examples/volume-*.hcl", filepath.Join(dir, "volume.*")} {
		m, err := filepath.Glob(glob)
		must.NoError(t, err)
		files = append(files, m...)
	}
	must.SliceLen(t, 2, filter(files, func(f string) bool { return strings.HasPrefix(f, dir) }), must.Sprint("nomad volume init wrote volume.hcl and volume.json"))
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			mu.Lock()
			got = nil
			mu.Unlock()
			cmd := exec.Command(bin, "volume", "create", "-address", srv.URL, f)
			cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=/usr/bin:/bin"}
			out, _ := cmd.CombinedOutput()
			src, err := os.ReadFile(f)
			must.NoError(t, err)
			d, diags := parseNomad(f, src)
			mu.Lock()
			sent := got
			mu.Unlock()
			if sent == nil {
				s, _ := Parse(f, src)
				must.Nil(t, s, must.Sprintf("nomad refused it (%s) but volspec accepts it", out))
				return
			}
			must.NotNil(t, d, must.Sprintf("nomad sent a volume but volspec refused it: %v", diags))
			must.Len(t, 1, sent.Volumes)
			want := sent.Volumes[0]
			v := d.vol
			must.Eq(t, want.ID, v.ID)
			must.Eq(t, want.Name, v.Name)
			must.Eq(t, want.Namespace, v.Namespace)
			must.Eq(t, want.PluginID, v.PluginID)
			must.Eq(t, want.SnapshotID, v.SnapshotID)
			must.Eq(t, want.CloneID, v.CloneID)
			must.Eq(t, want.RequestedCapabilities, v.RequestedCapabilities)
			must.Eq(t, want.MountOptions, v.MountOptions)
			must.Eq(t, want.RequestedTopologies, v.RequestedTopologies)
			must.Eq(t, map[string]string(want.Secrets), map[string]string(v.Secrets))
			must.Eq(t, want.Parameters, v.Parameters)
			// Capacities: what Spec holds, from the same literal. And the
			// CSI plugin, which gets the parameters Nomad sent, reads
			// them (ParseParams) as the validator did.
			s, sdiags := Parse(f, src)
			if strings.HasPrefix(f, dir) {
				// What nomad volume init writes is an example to start
				// from: it validates.
				must.NotNil(t, s, must.Sprintf("%v", sdiags))
			}
			if s != nil {
				must.Eq(t, want.RequestedCapacityMin, s.CapacityMin)
				must.Eq(t, want.RequestedCapacityMax, s.CapacityMax)
				p, err := ParseParams(want.Parameters)
				must.NoError(t, err)
				must.Eq(t, s.Params, p)
			}
		})
	}
}

func filter(xs []string, keep func(string) bool) []string {
	var out []string
	for _, x := range xs {
		if keep(x) {
			out = append(out, x)
		}
	}
	return out
}
