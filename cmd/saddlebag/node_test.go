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
	nodeLeaseLostRE  = regexp.MustCompile(`primary lease lost.*volume_id=vol1`)
)

// `saddlebag node` registers in Consul, publishes its node record, keeps a
// session, serves replicas and stands as primary; when Consul restarts
// under it (a dev agent forgets everything) it re-registers, recreates
// its session, reports the lease it lost and keeps serving.
func TestNodeAgentSurvivesConsulRestart(t *testing.T) {
	dev := testcluster.Dev(t, testcluster.Options{})
	work := t.TempDir()
	_, volReplica := startSecureReplica(t, filepath.Join(work, "vol-replica"), dev.HTTPAddr)
	node := startProc(t, "node", "--data-dir", filepath.Join(work, "node"), "--listen", "127.0.0.1:0",
		"--node", "n1", "--consul-addr", dev.HTTPAddr, "--label", "rack=r1", "--ttl", "1500ms", "--lock-delay", "1s",
		"--serve-volume", "vol1", "--serve-size", "16MiB", "--serve-replica", volReplica)
	addr := node.waitLine(t, replicaAddrRE, 10*time.Second)[1]
	node.waitLine(t, nodeSessionRE, 30*time.Second)
	node.waitLine(t, nodePrimaryRE, 30*time.Second)

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
	pair, _, err := c.API().KV().Get(c.Keys().Primary("vol1"), nil)
	must.NoError(t, err)
	must.NotNil(t, pair)
	must.NotEq(t, "", pair.Session)

	dev.Stop()
	must.NoError(t, dev.Restart(ctx))
	node.waitLine(t, nodeLeaseLostRE, 30*time.Second)
	node.waitCount(t, nodeRegisteredRE, 2, 30*time.Second)
	node.waitCount(t, nodeSessionRE, 2, 30*time.Second)
	waitForCond(t, 20*time.Second, "service, check and node record after the restart", checkRegistered)
	// It stands again and is primary under the new session.
	node.waitCount(t, nodePrimaryRE, 2, 30*time.Second)

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
		{"serve without replicas", []string{"--data-dir", "d", "--listen", "l", "--serve-volume", "v", "--serve-size", "1MiB"}},
		{"serve bad size", []string{"--data-dir", "d", "--listen", "l", "--serve-volume", "v", "--serve-size", "1000", "--serve-replica", "a:1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseNodeFlags(tc.args)
			var ue usageError
			must.True(t, errors.As(err, &ue), must.Sprint(err))
		})
	}
}
