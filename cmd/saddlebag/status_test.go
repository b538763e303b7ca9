package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/clusterstatus"
	"github.com/saddlebag/saddlebag/internal/testcluster"
)

// startRateNode runs `saddlebag node` with the CSI node service and a
// resync rate limit, listening on listen (a restart passes the address
// it had, which the volume record names).
func startRateNode(t *testing.T, consulAddr, listen, name, dir, rate string) *csiNode {
	t.Helper()
	n := &csiNode{name: name, dataDir: filepath.Join(dir, name, "data"), sock: filepath.Join(dir, name+".sock")}
	n.proc = startProc(t, "node", "--node", name, "--data-dir", n.dataDir, "--listen", listen, "--consul-addr", consulAddr,
		"--ttl", "1500ms", "--lock-delay", "1s", "--log-level", "debug", "--metrics-addr", "127.0.0.1:0",
		"--csi-endpoint", "unix://"+n.sock, "--csi-state-dir", filepath.Join(dir, name, "csi"), "--stage-timeout", "30s",
		"--resync-rate", rate)
	n.addr = n.waitLine(t, replicaAddrRE, 10*time.Second)[1]
	n.waitLine(t, nodeSessionRE, 30*time.Second)
	n.waitLine(t, csiServingRE, 10*time.Second)
	return n
}

// saddlebagStatus runs `saddlebag status` with args against Consul.
func saddlebagStatus(t *testing.T, consulAddr string, args ...string) string {
	t.Helper()
	out, err := exec.Command(saddlebagBin, append([]string{"status", "--consul-addr", consulAddr}, args...)...).CombinedOutput()
	must.NoError(t, err, must.Sprint(string(out)))
	return string(out)
}

var resyncLineRE = regexp.MustCompile(`(?m)^\s+n2\s+\S+\s+resyncing\s+\[#*-*\]\s+(\d+\.\d)%\s+.* of .*/s\s+eta \S+\s+\(bitmap\)$`)

// TestClusterStatus: `saddlebag status` from Consul alone, on real nodes
// and a controller: a volume staged on n1, n2 killed while data is
// written (degraded; n2 missing, its node down; the volume check's note
// names the nodes), n2 back (resyncing, with a progress bar, percent,
// rate and ETA, at the 2 MiB/s rate limit), then healthy with both in
// sync; --json and the one-volume view; an unknown volume is an error.
// The status seen during the resync is printed (the README shows it).
func TestClusterStatus(t *testing.T) {
	requireRoot(t)
	cl := testcluster.NewCluster(t, 2, testcluster.Options{})
	dir := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, dir) })
	recoverOnFailure(t, dir, filepath.Join(dir, "n1", "csi"), "pg")
	n1 := startRateNode(t, cl.Clients[0].HTTPAddr, cl.Clients[0].IP+":0", "n1", dir, "2MiB")
	n2 := startRateNode(t, cl.Clients[1].HTTPAddr, cl.Clients[1].IP+":0", "n2", dir, "2MiB")
	ctlProc, ctlSock := startController(t, cl.Server.HTTPAddr, "c1", dir)
	ctlProc.waitLine(t, activeControlRE, 30*time.Second)
	c := consulClient(t, cl.Server.HTTPAddr)
	waitHealthyNodes(t, c, 2)
	consul := cl.Server.HTTPAddr
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	out := saddlebagStatus(t, consul)
	must.StrContains(t, out, "no volumes")
	must.RegexMatch(t, regexp.MustCompile(`nodes: n1 \(healthy, .* free\) n2 \(healthy`), out)

	ctl := csi.NewControllerClient(dialCSI(t, ctlSock))
	_, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pg", Parameters: map[string]string{"replicas": "2"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 128 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	must.NoError(t, err)
	out = saddlebagStatus(t, consul, "pg")
	t.Logf("created, not staged:\n%s", out)
	must.StrContains(t, out, "volume pg  128 MiB  2 replicas  ext4")
	must.StrContains(t, out, "primary  none")
	must.StrContains(t, out, "health   not staged")

	_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "pg", NodeId: "n1", VolumeCapability: swCap})
	must.NoError(t, err)
	node := csi.NewNodeClient(dialCSI(t, n1.sock))
	staging := filepath.Join(dir, "staging", "pg")
	_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "pg", StagingTargetPath: staging, VolumeCapability: swCap})
	must.NoError(t, err)
	t.Cleanup(func() {
		_, _ = node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: "pg", StagingTargetPath: staging})
	})
	waitVolumeCheck(t, c, "pg", api.HealthPassing)
	out = saddlebagStatus(t, consul, "pg")
	must.StrContains(t, out, "health   healthy: in sync 2 of 2: n1, n2")
	must.RegexMatch(t, regexp.MustCompile(`primary  n1, epoch \d+`), out)

	// n2 dies while data is written: degraded, n2 missing.
	n2.kill()
	data := make([]byte, 24<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>13)
	}
	writeSynced(t, filepath.Join(staging, "while-n2-away"), data)
	waitVolumeCheck(t, c, "pg", api.HealthWarning)
	waitForCond(t, 30*time.Second, "n2 down and missing in the status", func() bool {
		out = saddlebagStatus(t, consul)
		return strings.Contains(out, "n2 (DOWN") && regexp.MustCompile(`(?m)^\s+n2\s+\S+\s+missing\s+lacks`).MatchString(out)
	})
	t.Logf("n2 away:\n%s", out)
	must.StrContains(t, out, "health   degraded: in sync 1 of 2: n1; not in sync: n2")

	// n2 back on its address: resync at 2 MiB/s, seen in progress.
	n2 = startRateNode(t, cl.Clients[1].HTTPAddr, n2.addr, "n2", dir, "2MiB")
	var during string
	waitForCond(t, 60*time.Second, "n2 resyncing in the status", func() bool {
		during = saddlebagStatus(t, consul)
		return resyncLineRE.MatchString(during)
	})
	fmt.Printf("saddlebag_status_during_resync:\n%s", during)
	t.Logf("during the resync:\n%s", during)
	must.StrContains(t, during, "health   degraded")
	// Read the JSON once the resync has copied something (its rate is
	// what it did over the time it took: zero at its start), or ended.
	var js string
	var v clusterstatus.Volume
	waitForCond(t, 60*time.Second, "n2's resync under way or over in the JSON status", func() bool {
		js = saddlebagStatus(t, consul, "--json", "pg")
		v = clusterstatus.Volume{}
		must.NoError(t, json.Unmarshal([]byte(js), &v), must.Sprint(js))
		for _, r := range v.Replicas {
			if r.Node == "n2" && r.Resync != nil && r.Resync.DoneBytes == 0 {
				return false
			}
		}
		return true
	})
	must.Eq(t, "pg", v.ID)
	must.Eq(t, "n1", v.Primary)
	var seenResync bool
	for _, r := range v.Replicas {
		if r.Node == "n2" && r.Resync != nil {
			seenResync = true
			must.Eq(t, clusterstatus.Resyncing, r.State)
			must.Positive(t, r.Resync.TotalBytes)
			must.Positive(t, r.Resync.BytesPerSec)
		}
	}
	if !seenResync {
		t.Logf("the resync ended between the two reads: %s", js)
	}

	waitForCond(t, 90*time.Second, "both in sync and healthy in the status", func() bool {
		out = saddlebagStatus(t, consul, "pg")
		return strings.Contains(out, "health   healthy: in sync 2 of 2: n1, n2") &&
			regexp.MustCompile(`(?m)^\s+n2\s+\S+\s+in sync`).MatchString(out)
	})
	t.Logf("back in sync:\n%s", out)

	cmd := exec.Command(saddlebagBin, "status", "--consul-addr", consul, "nope")
	b, err := cmd.CombinedOutput()
	must.Error(t, err)
	must.StrContains(t, string(b), "volume nope: no such volume")
}

// statusReadRules are the ACL rules the README gives `saddlebag status`.
const statusReadRules = `key_prefix "saddlebag/" { policy = "read" }
node_prefix "" { policy = "read" }
service_prefix "" { policy = "read" }`

// TestStatusWithACLToken: against Consul with ACLs in default-deny mode,
// `saddlebag status` works with a token of the read rules the README
// gives, and with an anonymous one it says the token may not read
// everything rather than showing an empty cluster.
func TestStatusWithACLToken(t *testing.T) {
	dev, c := aclConsul(t)
	p, _, err := c.ACL().PolicyCreate(&api.ACLPolicy{Name: "status", Rules: statusReadRules}, nil)
	must.NoError(t, err)
	tok, _, err := c.ACL().TokenCreate(&api.ACLToken{Description: "status", Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	must.NoError(t, err)
	_, err = c.KV().Put(&api.KVPair{Key: "saddlebag/volumes/v1", Value: []byte(`{"id":"v1","state":"ready","spec":{"size_bytes":1073741824,"replicas":1},` +
		`"replicas":[{"node":"n1","addr":"127.0.0.1:7400","state":"ready"}]}`)}, nil)
	must.NoError(t, err)
	out := saddlebagStatus(t, dev.HTTPAddr, "--consul-token", tok.SecretID)
	must.StrContains(t, out, "volume v1  1.0 GiB  1 replicas")
	b, err := exec.Command(saddlebagBin, "status", "--consul-addr", dev.HTTPAddr, "--consul-token", "").CombinedOutput()
	must.Error(t, err, must.Sprint(string(b)))
	must.StrContains(t, string(b), "the Consul token may not read saddlebag/")
}
