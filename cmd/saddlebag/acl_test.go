package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
)

// aclManagementToken is the test Consul's bootstrap (management) token.
const aclManagementToken = "5addb1e9-0000-4000-8000-00000000acl0"

// aclConsul starts a dev Consul with ACLs on in default-deny mode.
func aclConsul(t *testing.T) (*testcluster.Agent, *api.Client) {
	t.Helper()
	dev := testcluster.Dev(t, testcluster.Options{Token: aclManagementToken, HCL: `acl {
  enabled = true
  default_policy = "deny"
  down_policy = "deny"
  tokens {
    initial_management = "` + aclManagementToken + `"
    agent = "` + aclManagementToken + `"
  }
}`})
	c, err := api.NewClient(&api.Config{Address: dev.HTTPAddr, Token: aclManagementToken})
	must.NoError(t, err)
	return dev, c
}

// shippedPolicyToken creates the policy of jobs/acl/<name>.policy.hcl, as
// shipped, and a token holding only it.
func shippedPolicyToken(t *testing.T, c *api.Client, name string) string {
	t.Helper()
	rules, err := os.ReadFile(filepath.Join("..", "..", "jobs", "acl", name+".policy.hcl"))
	must.NoError(t, err)
	p, _, err := c.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: string(rules)}, nil)
	must.NoError(t, err)
	tok, _, err := c.ACL().TokenCreate(&api.ACLToken{Description: name, Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	must.NoError(t, err)
	return tok.SecretID
}

// TestLeastPrivilegeACLPolicies: against Consul with ACLs in
// default-deny mode, the policies shipped in jobs/acl are enough, and
// only just: the operator's token installs the intentions (the node's
// cannot); two nodes with the node policy register, and one of them,
// staging a volume through its CSI node plugin, reads the volume's
// record, takes its primary lease and serves it over mutual TLS (leaf,
// authorize, sessions, the in-sync transaction, health checks); two
// controllers with the controller policy elect a leader, place and
// create volumes on the nodes and forward a standby's call to the
// active one; and a node given the controller's token is refused the
// saddlebag-node registration.
func TestLeastPrivilegeACLPolicies(t *testing.T) {
	requireRoot(t)
	dev, admin := aclConsul(t)
	nodeTok := shippedPolicyToken(t, admin, "saddlebag-node")
	ctlTok := shippedPolicyToken(t, admin, "saddlebag-controller")
	opTok := shippedPolicyToken(t, admin, "saddlebag-operator")

	// Default deny is on: no token writes nothing.
	anon, err := api.NewClient(&api.Config{Address: dev.HTTPAddr})
	must.NoError(t, err)
	_, err = anon.KV().Put(&api.KVPair{Key: "saddlebag/x", Value: []byte("x")}, nil)
	must.ErrorContains(t, err, "403")

	out, err := exec.Command(saddlebagBin, "setup-intentions", "--consul-addr", dev.HTTPAddr, "--consul-token", nodeTok).CombinedOutput()
	must.Error(t, err, must.Sprint("the node's token wrote intentions: ", string(out)))
	out, err = exec.Command(saddlebagBin, "setup-intentions", "--consul-addr", dev.HTTPAddr, "--consul-token", opTok).CombinedOutput()
	must.NoError(t, err, must.Sprint(string(out)))
	must.StrContains(t, string(out), "intention * -> saddlebag-node: deny")

	dir := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, dir) })
	recoverOnFailure(t, dir, filepath.Join(dir, "n1-csi"), "vol1")
	a1 := "127.0.0.1:" + strconv.Itoa(freePort(t))
	a2 := "127.0.0.1:" + strconv.Itoa(freePort(t))
	nodeArgs := func(name, addr string, extra ...string) []string {
		return append([]string{"node", "--node", name, "--data-dir", filepath.Join(dir, name), "--listen", addr,
			"--consul-addr", dev.HTTPAddr, "--consul-token", nodeTok, "--ttl", "1500ms", "--lock-delay", "1s", "--metrics-addr", ""}, extra...)
	}
	n2 := startProc(t, nodeArgs("n2", a2)...)
	n2.waitLine(t, nodeSessionRE, 60*time.Second)
	n1Sock := filepath.Join(dir, "n1-csi.sock")
	n1 := startProc(t, nodeArgs("n1", a1, "--csi-endpoint", "unix://"+n1Sock, "--csi-state-dir", filepath.Join(dir, "n1-csi"),
		"--stage-timeout", "30s")...)
	n1.waitLine(t, nodeSessionRE, 60*time.Second)
	n1.waitLine(t, csiServingRE, 10*time.Second)

	c, err := leader.NewClient(leader.ConsulConfig{Address: dev.HTTPAddr, Token: aclManagementToken}, hclog.NewNullLogger())
	must.NoError(t, err)
	waitHealthyNodes(t, c, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p1, s1 := startController(t, dev.HTTPAddr, "c1", dir, "--consul-token", ctlTok)
	p1.waitLine(t, activeControlRE, 30*time.Second)
	// n1's CSI node plugin, with the node's token, stages vol1: it reads
	// the volume record, takes the primary lease and serves the volume
	// over mutual TLS to both replicas, recording them in sync.
	serveBlockVolume(t, ctx, s1, n1Sock, "n1", dir, "vol1", 16<<20, 2)
	n1.waitLine(t, nodePrimaryRE, 60*time.Second)
	rec, err := c.RecordedInSync(ctx, "vol1")
	must.NoError(t, err)
	must.NotNil(t, rec)
	must.SliceContainsAll(t, []string{a1, a2}, rec.Replicas)

	p2, s2 := startController(t, dev.HTTPAddr, "c2", dir, "--consul-token", ctlTok)
	p2.waitLine(t, regexpMust(`created consul session`), 30*time.Second)
	for i, sock := range []string{s1, s2} {
		name := "acl" + strconv.Itoa(i)
		_, err := csi.NewControllerClient(dialCSI(t, sock)).CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name,
			Parameters: map[string]string{"replicas": "2"}, CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{swCap}})
		must.NoError(t, err)
		v, _, err := c.GetVolume(ctx, name)
		must.NoError(t, err)
		must.Eq(t, leader.VolumeReady, v.State)
		for _, d := range []string{"n1", "n2"} {
			_, err := os.Stat(filepath.Join(dir, d, name))
			must.NoError(t, err, must.Sprintf("replica of %s on %s", name, d))
		}
	}
	p2.waitLine(t, regexpMust(`forwarding mutating calls to the active controller.*active=c1`), 5*time.Second)
	// A node's token may publish a volume's resync progress (the
	// transaction reads the volume record and sets the progress key).
	nc, err := leader.NewClient(leader.ConsulConfig{Address: dev.HTTPAddr, Token: nodeTok}, hclog.NewNullLogger())
	must.NoError(t, err)
	must.NoError(t, nc.PutResync(ctx, "acl0", leader.ResyncRecord{Epoch: 1, Node: "n1"}))

	// The controller's token cannot stand as a node: Consul refuses it
	// the saddlebag-node registration. (It does get the saddlebag-node
	// leaf certificate here, but only because the agent already holds
	// one for n1 and n2 in its cache and hands it out without checking
	// the token: see README "Security", limits.)
	bad := startProc(t, "node", "--node", "n3", "--data-dir", filepath.Join(dir, "n3"), "--listen", "127.0.0.1:0",
		"--consul-addr", dev.HTTPAddr, "--consul-token", ctlTok)
	bad.waitLine(t, regexpMust(`register service saddlebag-node-n3: .*403.*lacks permission 'service:write' on .{0,2}saddlebag-node`), 30*time.Second)
	bad.stop()
}
