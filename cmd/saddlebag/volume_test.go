package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
)

// runSaddlebag runs the built binary and returns its output and exit code.
func runSaddlebag(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(saddlebagBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // no NOMAD_* from the environment
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errorsAs(err, &exit) {
		t.Fatalf("run saddlebag: %v", err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}

func examplePath(name string) string { return filepath.Join("..", "..", "jobs", "examples", name) }

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	must.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	return p
}

// problemLine is one diagnostic line: FILE:LINE,COL: message.
var problemLine = regexp.MustCompile(`^(.+):(\d+),(\d+): (.*)$`)

// `saddlebag volume validate` exits 0 on a valid spec, and on each broken
// one exits 1 with one FILE:LINE,COL line at the right place saying what
// would be valid (the acceptance cases of issue 6, plus a few).
func TestVolumeValidate(t *testing.T) {
	src, err := os.ReadFile(examplePath("volume-postgres.hcl"))
	must.NoError(t, err)
	example := string(src)

	t.Run("valid", func(t *testing.T) {
		path := writeFile(t, "pg.hcl", example)
		stdout, stderr, code := runSaddlebag(t, "", "volume", "validate", path)
		must.Eq(t, 0, code, must.Sprintf("stderr: %s", stderr))
		must.Eq(t, "", stderr)
		must.Eq(t, path+`: ok: volume "postgres", plugin "saddlebag", 20GiB, 2 replicas (min_in_sync 1), ext4, spread across rack`+"\n", stdout)
	})

	cases := []struct {
		name      string
		from, to  string
		line, col string
		message   string
	}{
		{"missing plugin_id", `plugin_id = "saddlebag"`, ``, "1", "1", `plugin_id is missing; set the ID the Saddlebag plugin jobs register in their csi_plugin block, e.g. plugin_id = "saddlebag"`},
		{"capacity_min larger than capacity_max", `capacity_min = "20GiB"`, `capacity_min = "40GiB"`, "19", "16", "capacity_min (40GiB) is larger than capacity_max (20GiB); capacity_min must be at most capacity_max; set both to the same value for an exact size"},
		{"replicas = 0", `replicas    = 2 `, `replicas    = 0 `, "33", "17", "replicas must be a whole number from 1 to 5"},
		{"unknown access_mode", "\n  access_mode     = \"single-node-writer\"", "\n  access_mode     = \"single-node-multi-writer\"", "23", "21", `unknown access_mode "single-node-multi-writer"; Nomad's access modes are "single-node-reader-only", "single-node-writer", "multi-node-reader-only", "multi-node-single-writer" or "multi-node-multi-writer"`},
		{"syntax error", `type      = "csi"`, `type      = "csi`, "16", "17", "Invalid multi-line string; Quoted strings may not be split over multiple lines."},
		{"min_in_sync above replicas", `min_in_sync = 1 `, `min_in_sync = 3 `, "36", "17", "min_in_sync must be a whole number from 1 to replicas (2)"},
		{"fs_type", `fs_type     = "ext4" #`, `fs_type     = "zfs" #`, "34", "17", "fs_type must be ext4 or xfs"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			must.StrContains(t, example, c.from)
			path := writeFile(t, "bad.hcl", strings.Replace(example, c.from, c.to, 1))
			stdout, stderr, code := runSaddlebag(t, "", "volume", "validate", path)
			must.Eq(t, 1, code)
			must.Eq(t, "", stdout)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			must.Len(t, 2, lines, must.Sprintf("stderr: %s", stderr)) // the problem, then the count
			m := problemLine.FindStringSubmatch(lines[0])
			must.NotNil(t, m, must.Sprintf("line %q", lines[0]))
			must.Eq(t, path, m[1])
			must.Eq(t, c.line, m[2], must.Sprintf("%s", lines[0]))
			must.Eq(t, c.col, m[3], must.Sprintf("%s", lines[0]))
			must.StrHasPrefix(t, c.message, m[4])
			must.Eq(t, "saddlebag volume: 1 problem in 1 file", lines[1])
		})
	}
}

// Several files: each problem of each file on its own line, the valid
// ones reported ok, exit 1 if any is bad; warnings do not fail.
func TestVolumeValidateSeveralFiles(t *testing.T) {
	good := examplePath("volume-postgres.hcl")
	src, err := os.ReadFile(good)
	must.NoError(t, err)
	bad := writeFile(t, "bad.hcl", strings.NewReplacer(`plugin_id = "saddlebag"`, ``, `replicas    = 2 `, `replicas    = 9 `).Replace(string(src)))
	warn := writeFile(t, "warn.hcl", strings.Replace(string(src), `replicas    = 2 `, `replica     = 2 `, 1))

	stdout, stderr, code := runSaddlebag(t, "", "volume", "validate", good, bad, warn)
	must.Eq(t, 1, code)
	must.StrContains(t, stdout, good+": ok: ")
	must.StrContains(t, stdout, warn+": ok: ")
	must.Eq(t, strings.Join([]string{
		bad + `:1,1: plugin_id is missing; set the ID the Saddlebag plugin jobs register in their csi_plugin block, e.g. plugin_id = "saddlebag"`,
		bad + `:33,17: replicas must be a whole number from 1 to 5 in plain digits, like "2"`,
		warn + `:33,3: warning: unknown parameter "replica" (did you mean "replicas"?); Saddlebag's parameters are replicas, fs_type, spread, min_in_sync and encrypted; others are passed to the plugin and ignored`,
		`saddlebag volume: 2 problems in 1 file`,
	}, "\n")+"\n", stderr)

	_, _, code = runSaddlebag(t, "", "volume", "validate", good, warn)
	must.Eq(t, 0, code)
}

// Every example spec shipped in jobs/examples validates, from a file and
// from standard input.
func TestVolumeValidateExamples(t *testing.T) {
	files, err := filepath.Glob(examplePath("volume-*.hcl"))
	must.NoError(t, err)
	must.SliceNotEmpty(t, files)
	_, stderr, code := runSaddlebag(t, "", append([]string{"volume", "validate"}, files...)...)
	must.Eq(t, 0, code, must.Sprintf("stderr: %s", stderr))

	src, err := os.ReadFile(files[0])
	must.NoError(t, err)
	stdout, _, code := runSaddlebag(t, string(src), "volume", "validate", "-")
	must.Eq(t, 0, code)
	must.StrHasPrefix(t, "<stdin>: ok: ", stdout)
}

// The encrypted example validates and says so; encrypted = true without
// the passphrase secret is one error at the parameter naming the secret,
// and no message ever quotes the passphrase.
func TestVolumeValidateEncryption(t *testing.T) {
	src, err := os.ReadFile(examplePath("volume-postgres-encrypted.hcl"))
	must.NoError(t, err)
	example := string(src)
	path := writeFile(t, "enc.hcl", example)
	stdout, stderr, code := runSaddlebag(t, "", "volume", "validate", path)
	must.Eq(t, 0, code, must.Sprintf("stderr: %s", stderr))
	must.StrContains(t, stdout, "encrypted (AES-256-XTS, key sealed by secrets.encryption_passphrase)")
	must.StrNotContains(t, stdout, "replace with a long random passphrase")

	noSecret := example[:strings.Index(example, "secrets {")]
	path = writeFile(t, "nosecret.hcl", noSecret)
	_, stderr, code = runSaddlebag(t, "", "volume", "validate", path)
	must.Eq(t, 1, code)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	must.Len(t, 2, lines, must.Sprintf("stderr: %s", stderr))
	must.Eq(t, path+`:35,15: encrypted = true needs the secret encryption_passphrase: add secrets { encryption_passphrase = "..." } to the volume (Nomad passes it to the plugin at create and at every stage)`, lines[0])

	short := strings.Replace(example, `"replace with a long random passphrase"`, `"hunter2"`, 1)
	path = writeFile(t, "short.hcl", short)
	_, stderr, code = runSaddlebag(t, "", "volume", "validate", path)
	must.Eq(t, 1, code)
	must.StrContains(t, stderr, path+":39,27: encryption_passphrase must be at least 8 bytes")
	must.StrNotContains(t, stderr, "hunter2")
}

func TestVolumeUsage(t *testing.T) {
	for _, args := range [][]string{{"volume"}, {"volume", "frobnicate"}, {"volume", "validate"}, {"volume", "create"}, {"volume", "validate", "--nope", "x.hcl"}} {
		_, stderr, code := runSaddlebag(t, "", args...)
		must.Eq(t, 2, code, must.Sprintf("%v: %s", args, stderr))
		must.Eq(t, 1, strings.Count(stderr, "\n"), must.Sprintf("%v: %s", args, stderr))
	}
}

// fakeNomad stands in for Nomad's HTTP API: it records the volume create
// requests it gets and answers with status and body.
type fakeNomad struct {
	*httptest.Server
	mu       sync.Mutex
	requests []*http.Request
	bodies   [][]byte
}

func newFakeNomad(t *testing.T, status int, body string) *fakeNomad {
	f := &fakeNomad{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.requests, f.bodies = append(f.requests, r), append(f.bodies, b)
		f.mu.Unlock()
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(f.Close)
	return f
}

// `saddlebag volume create` sends the spec to Nomad's create endpoint as
// `nomad volume create` would: capacities in bytes, capabilities, mount
// options, topology, secrets and parameters as strings; the token as
// X-Nomad-Token.
func TestVolumeCreateSendsSpecToNomad(t *testing.T) {
	nomad := newFakeNomad(t, http.StatusOK, `{"Volumes":[{"ID":"postgres","ExternalID":"postgres-1a2b"}],"Warnings":""}`)
	src, err := os.ReadFile(examplePath("volume-postgres.hcl"))
	must.NoError(t, err)
	spec := writeFile(t, "pg.hcl", strings.Replace(string(src), "parameters {",
		"topology_request {\n  required {\n    topology { segments = { rack = \"r1\" } }\n  }\n}\nsecrets {\n  pass = \"hunter2\"\n}\nparameters {", 1))

	stdout, stderr, code := runSaddlebag(t, "", "volume", "create", spec, "--address", nomad.URL, "--token", "tok-1")
	must.Eq(t, 0, code, must.Sprintf("stderr: %s", stderr))
	must.Eq(t, "Created external volume postgres-1a2b with ID postgres\n", stdout)

	must.Len(t, 1, nomad.requests)
	r := nomad.requests[0]
	must.Eq(t, http.MethodPut, r.Method)
	must.Eq(t, "/v1/volume/csi/postgres/create", r.URL.Path)
	must.Eq(t, "tok-1", r.Header.Get("X-Nomad-Token"))
	var req api.CSIVolumeCreateRequest
	must.NoError(t, json.Unmarshal(nomad.bodies[0], &req))
	must.Len(t, 1, req.Volumes)
	v := req.Volumes[0]
	must.Eq(t, "postgres", v.ID)
	must.Eq(t, "postgres", v.Name)
	must.Eq(t, "saddlebag", v.PluginID)
	must.Eq(t, int64(20<<30), v.RequestedCapacityMin)
	must.Eq(t, int64(20<<30), v.RequestedCapacityMax)
	must.Eq(t, []*api.CSIVolumeCapability{{AccessMode: "single-node-writer", AttachmentMode: "file-system"}}, v.RequestedCapabilities)
	must.Eq(t, &api.CSIMountOptions{FSType: "ext4", MountFlags: []string{"noatime"}}, v.MountOptions)
	must.Eq(t, &api.CSITopologyRequest{Required: []*api.CSITopology{{Segments: map[string]string{"rack": "r1"}}}}, v.RequestedTopologies)
	must.Eq(t, api.CSISecrets{"pass": "hunter2"}, v.Secrets)
	must.Eq(t, map[string]string{"replicas": "2", "fs_type": "ext4", "spread": "rack", "min_in_sync": "1"}, v.Parameters)
	must.StrNotContains(t, stdout+stderr, "hunter2")
}

// An invalid spec is reported and nothing reaches Nomad.
func TestVolumeCreateInvalidSendsNothing(t *testing.T) {
	nomad := newFakeNomad(t, http.StatusOK, `{}`)
	src, err := os.ReadFile(examplePath("volume-postgres.hcl"))
	must.NoError(t, err)
	spec := writeFile(t, "bad.hcl", strings.Replace(string(src), `replicas    = 2 `, `replicas    = 0 `, 1))
	_, stderr, code := runSaddlebag(t, "", "volume", "create", "--address", nomad.URL, spec)
	must.Eq(t, 1, code)
	must.Eq(t, spec+":33,17: replicas must be a whole number from 1 to 5 in plain digits, like \"2\"\nsaddlebag volume: nothing created: 1 problem in 1 file\n", stderr)
	must.Len(t, 0, nomad.requests)
}

func TestVolumeCreateNomadUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	addr := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	_, stderr, code := runSaddlebag(t, "", "volume", "create", examplePath("volume-postgres.hcl"), "--address", addr)
	must.Eq(t, 1, code)
	must.StrHasPrefix(t, "saddlebag volume: cannot reach Nomad at "+addr+" (set --address or $NOMAD_ADDR): ", stderr)
	must.StrContains(t, stderr, "connection refused")
}

func TestVolumeCreateNomadRefuses(t *testing.T) {
	nomad := newFakeNomad(t, http.StatusBadRequest, "plugin \"saddlebag\" not found")
	_, stderr, code := runSaddlebag(t, "", "volume", "create", examplePath("volume-postgres.hcl"), "--address", nomad.URL)
	must.Eq(t, 1, code)
	must.StrHasPrefix(t, `saddlebag volume: nomad refused volume "postgres": `, stderr)
	must.StrContains(t, stderr, `400`)
	must.StrContains(t, stderr, `plugin "saddlebag" not found`)
}
