package main

import (
	"context"
	"errors"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
)

// waitCount waits until at least n stderr lines match re.
func (p *proc) waitCount(t *testing.T, re *regexp.Regexp, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p.mu.Lock()
		got := 0
		for _, l := range p.lines {
			if re.MatchString(l) {
				got++
			}
		}
		p.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("process exited with %d of %d lines matching %q", got, n, re)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d lines matching %q within %s", got, n, re, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var (
	nodeSessionRE    = regexp.MustCompile(`created consul session`)
	nodeRegisteredRE = regexp.MustCompile(`registered with consul`)
	nodePrimaryRE    = regexp.MustCompile(`serving as primary.*volume_id=vol1`)
	nodeLeaseLostRE  = regexp.MustCompile(`lease lost; I/O fenced.*volume_id=vol1`)
)

// `saddlebag node` registers in Consul, publishes its node record, keeps a
// session, serves replicas and, staging a volume through its CSI node
// plugin, is the volume's primary; when Consul restarts under it (a dev
// agent forgets everything) it re-registers, recreates its session,
// reports the lease it lost and keeps serving. Once the volume's records
// are restored (as from a backup of Consul's data), staging it again
// makes it primary under the new session.
func TestNodeAgentSurvivesConsulRestart(t *testing.T) {
	requireRoot(t)
	dev := testcluster.Dev(t, testcluster.Options{})
	work := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, work) })
	recoverOnFailure(t, work, filepath.Join(work, "n1", "csi"), "vol1")
	node := startCSINode(t, dev.HTTPAddr, "127.0.0.1", "n1", work, true, "rack=r1")
	addr := node.addr
	_, ctlSock := startController(t, dev.HTTPAddr, "c1", work)

	c, err := leader.NewClient(leader.ConsulConfig{Address: dev.HTTPAddr}, hclog.NewNullLogger())
	must.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	checkRegistered := func() bool {
		checks, _, err := c.API().Health().Checks(leader.NodeService, nil)
		if err != nil {
			return false
		}
		passing := false
		for _, ch := range checks {
			passing = passing || (ch.CheckID == "saddlebag-node-n1:ttl" && ch.Status == api.HealthPassing)
		}
		if !passing {
			return false
		}
		rec, err := c.ReadNode(ctx, "n1")
		return err == nil && rec.ReplicaAddr == addr && rec.Labels["rack"] == "r1" && rec.CapacityBytes > 0 && rec.FreeBytes > 0
	}
	waitForCond(t, 10*time.Second, "service, check and node record", checkRegistered)
	vol := serveBlockVolume(t, ctx, ctlSock, node.sock, "n1", work, "vol1", 16<<20, 1)
	node.waitLine(t, nodePrimaryRE, 30*time.Second)
	kv := c.API().KV()
	pair, _, err := kv.Get(c.Keys().Primary("vol1"), nil)
	must.NoError(t, err)
	must.NotNil(t, pair)
	must.NotEq(t, "", pair.Session)
	oldSession := pair.Session
	before, err := c.ReadPrimary(ctx, "vol1")
	must.NoError(t, err)
	// What a restore of Consul's data brings back (`consul kv export` and
	// `import` of the volume's keys): its record and in-sync record, not
	// its lock (a session cannot be restored).
	var saved []*api.KVPair
	for _, k := range []string{c.Keys().Volume("vol1"), c.Keys().InSync("vol1")} {
		p, _, err := kv.Get(k, nil)
		must.NoError(t, err)
		must.NotNil(t, p, must.Sprint(k))
		saved = append(saved, &api.KVPair{Key: p.Key, Flags: p.Flags, Value: p.Value})
	}

	dev.Stop()
	must.NoError(t, dev.Restart(ctx))
	node.waitLine(t, nodeLeaseLostRE, 30*time.Second)
	node.waitCount(t, nodeRegisteredRE, 2, 30*time.Second)
	node.waitCount(t, nodeSessionRE, 2, 30*time.Second)
	waitForCond(t, 20*time.Second, "service, check and node record after the restart", checkRegistered)
	// Staged again (its stage lost the lease: it is undone and done over),
	// it is primary under the new session, at a new epoch.
	for _, p := range saved {
		_, err := kv.Put(p, nil)
		must.NoError(t, err)
	}
	vol.stage(t, ctx)
	node.waitCount(t, nodePrimaryRE, 2, 30*time.Second)
	pair, _, err = kv.Get(c.Keys().Primary("vol1"), nil)
	must.NoError(t, err)
	must.NotNil(t, pair)
	must.NotEq(t, "", pair.Session)
	must.NotEq(t, oldSession, pair.Session)
	must.Eq(t, "n1", string(pair.Value))
	after, err := c.ReadPrimary(ctx, "vol1")
	must.NoError(t, err)
	must.Greater(t, before.Epoch, after.Epoch)

	// Its replica server kept serving throughout, over mutual TLS with the
	// certificates of the restarted (dev: new) CA.
	dial := secureDialer(t, dev.HTTPAddr, connecttls.NodeService)
	var eng *replication.Engine
	waitForCond(t, 30*time.Second, "a primary reaching the replica server with the new CA's certificate", func() bool {
		eng, err = replication.StartEngine(ctx, replication.EngineConfig{Volume: "probe", Size: 1 << 20, Epoch: 1,
			Replicas: []replication.ReplicaConfig{{Addr: addr}}, Dial: dial})
		if err != nil {
			t.Logf("probe: %v", err)
		}
		return err == nil
	})
	defer eng.Close()
	must.NoError(t, eng.WriteAt(ctx, make([]byte, 4096), 0, true))
}

func waitForCond(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestNodeFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"no data dir", []string{"--listen", "127.0.0.1:0"}},
		{"bad label", []string{"--data-dir", "d", "--listen", "l", "--label", "rack"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseNodeFlags(tc.args)
			var ue usageError
			must.True(t, errors.As(err, &ue), must.Sprint(err))
		})
	}
}
