package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"

	"github.com/saddlebag/saddlebag/e2e/cluster"
	"github.com/saddlebag/saddlebag/e2e/cluster/timeline"
)

// Helpers of TestSaddlebag: reading the volume's state from Consul,
// Nomad and the nodes' disks, and printing its failover figures.

// registerSpec is the volume as `nomad volume register` updates it: the
// same volume (external_id), its secret changed.
func registerSpec(secret string) string {
	return `id          = "` + volID + `"
name        = "` + volID + `"
type        = "csi"
plugin_id   = "` + cluster.PluginID + `"
external_id = "` + volID + `"

capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}

mount_options {
  fs_type     = "ext4"
  mount_flags = ["noatime"]
}

secrets {
  encryption_passphrase = "` + secret + `"
}
`
}

// noPlaintext fails if a replica data file of the volume on any of nodes
// holds markerRow, or holds no data at all.
func noPlaintext(t *testing.T, c *cluster.Cluster, nodes []string) {
	t.Helper()
	for _, n := range nodes {
		f, err := os.Open(filepath.Join(nodeNamed(t, c, n).DataDir, volID, "data"))
		must.NoError(t, err)
		buf := make([]byte, 4<<20)
		var carry []byte
		nonzero := false
		for {
			k, err := f.Read(buf)
			chunk := append(carry, buf[:k]...)
			if bytes.Contains(chunk, []byte(markerRow)) {
				f.Close()
				t.Fatalf("the replica on %s holds a committed row in clear", n)
			}
			nonzero = nonzero || bytes.ContainsFunc(buf[:k], func(r rune) bool { return r != 0 })
			carry = append(carry[:0], chunk[max(0, len(chunk)-len(markerRow)):]...)
			if err == io.EOF {
				break
			}
			must.NoError(t, err)
		}
		f.Close()
		must.True(t, nonzero, must.Sprintf("the replica on %s holds no data", n))
	}
}

// waitQuery polls the Postgres on ip until a query answers, and returns
// when it first did.
func waitQuery(ctx context.Context, ip string, timeout time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
		out, err := psql(qctx, ip, "SELECT 1")
		qcancel()
		if err == nil && strings.TrimSpace(out) == "1" {
			return time.Now(), nil
		}
		last = strings.TrimSpace(out)
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("postgres on %s never answered: %w; last: %s", ip, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// printFigures prints the named figures a failover timeline gives:
// when Consul saw the node fail and freed the primary lock (session
// invalidation), when Nomad released the old claim and granted the new
// one, when the new primary took the lease and served.
func printFigures(tl *timeline.Timeline, suffix string) {
	for _, f := range []struct{ name, step string }{
		{"consul_serf_failed_seconds", "serfHealth critical"},
		{"consul_session_invalidated_seconds", "primary lock free"},
		{"nomad_old_claim_released_seconds", "old claim released"},
		{"nomad_new_claim_granted_seconds", "new claim granted"},
		{"primary_lease_taken_seconds", "primary lease taken"},
		{"engine_serving_seconds", "serving as primary"},
		{"fs_mounted_seconds", "volume staged"},
		{"task_started_seconds", "Started: Task started"},
	} {
		if e, ok := tl.First(f.step); ok {
			fmt.Printf("%s%s %.2f\n", f.name, suffix, e.At.Sub(tl.T0).Seconds())
		} else {
			fmt.Printf("%s%s missing\n", f.name, suffix)
		}
	}
}

// firstOf returns the first step whose text starts with prefix and
// contains any of subs.
func firstOf(tl *timeline.Timeline, prefix string, subs ...string) (timeline.Event, bool) {
	for _, e := range tl.Events() {
		if !strings.HasPrefix(e.What, prefix) {
			continue
		}
		for _, s := range subs {
			if strings.Contains(e.What, s) {
				return e, true
			}
		}
	}
	return timeline.Event{}, false
}

type volRecord struct {
	State    string `json:"state"`
	Replicas []struct {
		Node  string `json:"node"`
		State string `json:"state"`
	} `json:"replicas"`
}

// volumeRecord reads the controller's record of the volume from Consul,
// as an operator would with `consul kv get`.
func volumeRecord(t *testing.T, ctx context.Context, capi *consulapi.Client) volRecord {
	t.Helper()
	kv, _, err := capi.KV().Get("saddlebag/volumes/"+volID, (&consulapi.QueryOptions{}).WithContext(ctx))
	must.NoError(t, err)
	must.NotNil(t, kv, must.Sprint("no volume record in consul"))
	var r volRecord
	must.NoError(t, json.Unmarshal(kv.Value, &r))
	return r
}

func replicaNodes(t *testing.T, ctx context.Context, capi *consulapi.Client) []string {
	t.Helper()
	var ns []string
	for _, r := range volumeRecord(t, ctx, capi).Replicas {
		ns = append(ns, r.Node)
	}
	slices.Sort(ns)
	return ns
}

func otherReplica(t *testing.T, ctx context.Context, c *cluster.Cluster, capi *consulapi.Client, not string) *cluster.Node {
	t.Helper()
	ns := replicaNodes(t, ctx, capi)
	must.Len(t, 2, ns)
	must.SliceContains(t, ns, not)
	if ns[0] == not {
		return nodeNamed(t, c, ns[1])
	}
	return nodeNamed(t, c, ns[0])
}

// replicaAddr is nd's replica server address (the node job's static
// port), which the in-sync record lists.
func replicaAddr(nd *cluster.Node) string { return nd.IP + ":7400" }

// inSync reads the primary's in-sync record (replica addresses).
func inSync(t *testing.T, ctx context.Context, capi *consulapi.Client) []string {
	t.Helper()
	kv, _, err := capi.KV().Get("saddlebag/volumes/"+volID+"/insync", (&consulapi.QueryOptions{}).WithContext(ctx))
	must.NoError(t, err)
	must.NotNil(t, kv)
	var r struct {
		Replicas []string `json:"replicas"`
	}
	must.NoError(t, json.Unmarshal(kv.Value, &r))
	return r.Replicas
}

// checkStatus returns the status of check id on Consul node node ("" if
// it has none).
func checkStatus(ctx context.Context, capi *consulapi.Client, node, id string) (string, string, error) {
	checks, _, err := capi.Health().Node(node, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return "", "", err
	}
	for _, ch := range checks {
		if ch.CheckID == id {
			return ch.Status, ch.Output, nil
		}
	}
	return "", "", nil
}

// waitCheck waits until check id on node has status want.
func waitCheck(ctx context.Context, capi *consulapi.Client, node, id, want string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last, output string
	for {
		st, out, err := checkStatus(ctx, capi, node, id)
		if err == nil && st == want {
			return nil
		}
		last, output = st, out
		select {
		case <-ctx.Done():
			return fmt.Errorf("consul check %s on %s is %q (%s), want %s: %w", id, node, last, output, want, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// saddlebagNodeLogs returns a function reading the logs of node's
// saddlebag-node allocation (the one running now) from the node's disk,
// which works also while Nomad cannot reach the node.
func saddlebagNodeLogs(t *testing.T, ctx context.Context, napi *nomadapi.Client, nd *cluster.Node) func() string {
	t.Helper()
	allocs, _, err := napi.Jobs().Allocations("saddlebag-node", false, (&nomadapi.QueryOptions{}).WithContext(ctx))
	must.NoError(t, err)
	var id string
	for _, a := range allocs {
		if a.NodeName == nd.Name && a.ClientStatus == nomadapi.AllocClientStatusRunning {
			id = a.ID
		}
	}
	must.NotEq(t, "", id, must.Sprintf("no running saddlebag-node allocation on %s", nd.Name))
	dir := filepath.Join(nd.NomadDataDir, "alloc", id, "alloc", "logs")
	return func() string {
		var b strings.Builder
		for _, f := range []string{"node.stderr.0", "node.stdout.0"} {
			data, _ := os.ReadFile(filepath.Join(dir, f))
			b.Write(data)
		}
		return b.String()
	}
}

// csiMounts lists the mounts of the volume left on nd: staging and
// publish paths under its Nomad client's CSI directory and FUSE files
// under its Saddlebag run directory.
func csiMounts(t *testing.T, nd *cluster.Node) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mounts")
	must.NoError(t, err)
	var ms []string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		if strings.HasPrefix(f[1], filepath.Join(nd.NomadDataDir, "client", "csi")+"/") ||
			strings.HasPrefix(f[1], filepath.Join(nd.Dir, "run")+"/") {
			ms = append(ms, l)
		}
	}
	return ms
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	must.NoError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	must.NoError(t, err)
	return fmt.Sprintf("%x", h.Sum(nil))
}

func until(timeout time.Duration, f func() bool) *wait.Constraint {
	return wait.InitialSuccess(wait.BoolFunc(f), wait.Timeout(timeout), wait.Gap(200*time.Millisecond))
}

// regexpLine matches re at the start of a line of `nomad ... status`
// output.
func regexpLine(re string) *regexp.Regexp { return regexp.MustCompile(`(?m)^` + re + `\b`) }

func tail(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}
