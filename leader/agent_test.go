package leader_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/leader/fake"
)

func TestKeysLayout(t *testing.T) {
	for _, tc := range []struct {
		prefix, want string
		err          bool
	}{
		{"", "saddlebag/", false},
		{"saddlebag/", "saddlebag/", false},
		{"team/sb", "team/sb/", false},
		{"/abs", "", true},
		{"a//b", "", true},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			k, err := leader.NewKeys(tc.prefix)
			if tc.err {
				must.ErrorIs(t, err, leader.ErrInvalid)
				return
			}
			must.NoError(t, err)
			p := tc.want
			must.Eq(t, p+"leader", k.Leader())
			must.Eq(t, p+"nodes/n1", k.Node("n1"))
			must.Eq(t, p+"volumes/v1", k.Volume("v1"))
			must.Eq(t, p+"volumes/v1/primary", k.Primary("v1"))
			must.Eq(t, p+"volumes/v1/insync", k.InSync("v1"))
		})
	}
}

func TestAgentRegistersServiceRecordAndSession(t *testing.T) {
	dev := devAgent(t)
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{})
	a := runAgent(t, c, "n1", nil)

	checks, _, err := c.API().Health().Checks(leader.NodeService, nil)
	must.NoError(t, err)
	must.SliceLen(t, 1, checks)
	must.Eq(t, a.CheckID(), checks[0].CheckID)
	must.Eq(t, api.HealthPassing, checks[0].Status)

	// The node record is written after the session (leases depend on the
	// session, the record is informational): wait for it.
	var rec leader.NodeRecord
	waitFor(t, 10*time.Second, "node record", func() bool {
		var err error
		rec, err = c.ReadNode(context.Background(), "n1")
		return err == nil
	})
	must.Eq(t, "127.0.0.1:7400", rec.ReplicaAddr)
	must.Eq(t, "r1", rec.Labels["rack"])
	must.Eq(t, int64(100<<30), rec.CapacityBytes)

	se, _, err := c.API().Session().Info(a.SessionID(), nil)
	must.NoError(t, err)
	must.NotNil(t, se)
	must.Eq(t, 2*time.Second, se.LockDelay)
	must.Eq(t, []string{"serfHealth"}, se.NodeChecks)
	must.SliceLen(t, 1, se.ServiceChecks)
	must.Eq(t, a.CheckID(), se.ServiceChecks[0].ID)
}

// Two agents race for one volume: exactly one holds the lease, and its
// epoch is the key's LockIndex. When it releases, the other gets it with a
// higher epoch, without waiting for lock-delay.
func TestTwoAgentsRaceForOneVolume(t *testing.T) {
	dev := devAgent(t)
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{})
	agents := []*leader.Agent{runAgent(t, c, "n1", nil), runAgent(t, c, "n2", nil)}

	type result struct {
		i     int
		lease *leader.Lease
		err   error
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make(chan result, 2)
	for i, a := range agents {
		go func() {
			l, err := a.AcquirePrimary(ctx, "vol1")
			results <- result{i, l, err}
		}()
	}
	var first result
	select {
	case first = <-results:
	case <-time.After(30 * time.Second):
		t.Fatal("neither agent acquired the lease")
	}
	must.NoError(t, first.err)
	// The other is still waiting while the holder confirms its lease.
	select {
	case r := <-results:
		t.Fatalf("both agents acquired the lease (second: %v, err %v)", r.lease, r.err)
	case <-time.After(3 * time.Second):
	}
	pair, _, err := c.API().KV().Get(c.Keys().Primary("vol1"), &api.QueryOptions{RequireConsistent: true})
	must.NoError(t, err)
	must.Eq(t, pair.LockIndex, first.lease.Epoch())
	must.Eq(t, agents[first.i].SessionID(), pair.Session)
	must.Nil(t, first.lease.Err())

	released := time.Now()
	must.NoError(t, first.lease.Release(context.Background()))
	must.ErrorIs(t, first.lease.Err(), leader.ErrLeaseReleased)
	second := <-results
	must.NoError(t, second.err)
	must.NotEq(t, first.i, second.i)
	must.Greater(t, first.lease.Epoch(), second.lease.Epoch())
	must.Less(t, agents[0].LockDelay(), time.Since(released), must.Sprint("a clean release must not impose lock-delay"))
	pair, _, err = c.API().KV().Get(c.Keys().Primary("vol1"), &api.QueryOptions{RequireConsistent: true})
	must.NoError(t, err)
	must.Eq(t, pair.LockIndex, second.lease.Epoch())
}

// A holder cut off from Consul holds its I/O within the hold bound (before
// lock-delay) and releases it when it can confirm the lease again.
func TestLeaseHoldsWhileUnconfirmedAndReleasesOnConfirm(t *testing.T) {
	dev := devAgent(t)
	proxy, err := testcluster.NewProxy("127.0.0.1", dev.HTTPAddr)
	must.NoError(t, err)
	pctx, pcancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); proxy.Serve(pctx) }()
	t.Cleanup(func() { pcancel(); <-done })

	c := newClient(t, proxy.Addr(), leader.ConsulConfig{})
	// A long TTL keeps the session alive through a short cut.
	a := runAgent(t, c, "n1", func(cfg *leader.AgentConfig) { cfg.TTL = 30 * time.Second; cfg.LockDelay = 2 * time.Second })
	l, err := a.AcquirePrimary(ctxTimeout(t, 10*time.Second), "vol1")
	must.NoError(t, err)
	gate := fake.NewGate()
	l.Guard(gate)

	cut := time.Now()
	proxy.Cut()
	waitFor(t, 5*time.Second, "hold", func() bool { _, ok := gate.First("hold"); return ok })
	hold, _ := gate.First("hold")
	holdAfter := leader.LeaseHoldAfter(a.LockDelay())
	must.Less(t, a.LockDelay(), hold.At.Sub(cut), must.Sprint("held only after lock-delay"))
	must.Less(t, holdAfter+200*time.Millisecond, hold.At.Sub(cut))
	held, holds := l.Held()
	must.True(t, held)
	must.Eq(t, 1, holds)

	proxy.Restore()
	waitFor(t, 5*time.Second, "release", func() bool { _, ok := gate.First("release"); return ok })
	_, fenced := gate.First("fence")
	must.False(t, fenced)
	must.Nil(t, l.Err())
}

// Consul restarted under a running agent (a dev agent comes back empty):
// the agent re-registers, recreates its session and node record; the
// lease it held is reported lost (and its gate fenced), not assumed.
func TestConsulRestartUnderRunningAgent(t *testing.T) {
	dev := devAgent(t)
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{})
	a := runAgent(t, c, "n1", func(cfg *leader.AgentConfig) { cfg.TTL = 1500 * time.Millisecond })
	l, err := a.AcquirePrimary(ctxTimeout(t, 10*time.Second), "vol1")
	must.NoError(t, err)
	gate := fake.NewGate()
	l.Guard(gate)
	must.NoError(t, a.ReportVolume(context.Background(), "vol1", leader.VolumeHealth{State: leader.Healthy, Note: "ok"}))
	before := a.Stats()
	oldSession := a.SessionID()

	dev.Stop()
	waitFor(t, 10*time.Second, "hold while consul is down", func() bool { held, _ := l.Held(); return held })
	must.NoError(t, dev.Restart(context.Background()))

	select {
	case <-l.Lost():
	case <-time.After(20 * time.Second):
		t.Fatal("lease not reported lost after consul forgot it")
	}
	must.ErrorIs(t, l.Err(), leader.ErrLeaseLost)
	must.StrContains(t, l.Err().Error(), "gone")
	fence, ok := gate.First("fence")
	must.True(t, ok)
	must.ErrorIs(t, fence.Cause, leader.ErrLeaseLost)

	waitFor(t, 20*time.Second, "re-registration and a new session", func() bool {
		st := a.Stats()
		return st.Registrations > before.Registrations && st.Sessions > before.Sessions && a.SessionID() != ""
	})
	must.NotEq(t, oldSession, a.SessionID())
	waitFor(t, 10*time.Second, "service, node record and volume check back", func() bool {
		checks, _, err := c.API().Health().Node("dev", nil)
		if err != nil {
			return false
		}
		var ids []string
		for _, ch := range checks {
			if ch.Status == api.HealthPassing {
				ids = append(ids, ch.CheckID)
			}
		}
		_, err = c.ReadNode(context.Background(), "n1")
		return err == nil && slices.Contains(ids, a.CheckID()) && slices.Contains(ids, leader.VolumeCheckID("vol1"))
	})
	// The agent serves on: a new lease can be taken, at a new epoch.
	l2, err := a.AcquirePrimary(ctxTimeout(t, 10*time.Second), "vol1")
	must.NoError(t, err)
	must.Nil(t, l2.Err())
}

func TestVolumeHealthChecks(t *testing.T) {
	dev := devAgent(t)
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{})
	a := runAgent(t, c, "n1", nil)
	ctx := context.Background()
	for _, tc := range []struct {
		name           string
		want           int
		replicas, sync []string
		state          leader.HealthState
		status         string
	}{
		{"healthy", 2, []string{"a:1", "b:1"}, []string{"a:1", "b:1"}, leader.Healthy, api.HealthPassing},
		{"degraded", 3, []string{"a:1", "b:1", "c:1"}, []string{"a:1"}, leader.Degraded, api.HealthWarning},
		{"offline", 2, []string{"a:1", "b:1"}, nil, leader.Offline, api.HealthCritical},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := leader.ClassifyVolume(tc.want, tc.replicas, tc.sync)
			must.Eq(t, tc.state, h.State)
			for _, r := range tc.replicas {
				must.StrContains(t, h.Note, r)
			}
			must.NoError(t, a.ReportVolume(ctx, "vol1", h))
			// The catalog (what the UI shows) follows the agent shortly.
			var found *api.HealthCheck
			waitFor(t, 10*time.Second, "check in the catalog", func() bool {
				checks, _, err := c.API().Health().Node("dev", nil)
				must.NoError(t, err)
				for _, ch := range checks {
					if ch.CheckID == leader.VolumeCheckID("vol1") && ch.Status == tc.status && strings.Contains(ch.Output, string(tc.state)) {
						found = ch
						return true
					}
				}
				return false
			})
			must.StrContains(t, found.Output, string(tc.state))
			must.StrContains(t, found.Output, tc.replicas[0])
			must.Eq(t, a.ServiceID(), found.ServiceID)
		})
	}
	must.NoError(t, a.ForgetVolume(ctx, "vol1"))
	waitFor(t, 10*time.Second, "check gone from the catalog", func() bool {
		checks, _, err := c.API().Health().Node("dev", nil)
		must.NoError(t, err)
		for _, ch := range checks {
			if ch.CheckID == leader.VolumeCheckID("vol1") {
				return false
			}
		}
		return true
	})
}

// With ACLs on and default deny, the agent works with a token and a
// client without one is refused.
func TestACLTokenHonoured(t *testing.T) {
	const token = "7f3c1d2e-0000-4000-8000-000000000001"
	dev := testcluster.Dev(t, testcluster.Options{Token: token, HCL: `acl {
  enabled = true
  default_policy = "deny"
  tokens { initial_management = "` + token + `"
           agent = "` + token + `" }
}`})
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{Token: token})
	a := runAgent(t, c, "n1", nil)
	l, err := a.AcquirePrimary(ctxTimeout(t, 10*time.Second), "vol1")
	must.NoError(t, err)
	must.Positive(t, l.Epoch())

	anon := newClient(t, dev.HTTPAddr, leader.ConsulConfig{Token: "anonymous-nope"})
	_, err = anon.ReadNode(context.Background(), "n1")
	var se api.StatusError
	must.True(t, errors.As(err, &se), must.Sprint(err))
	must.Eq(t, 403, se.Code)
}

// Over HTTPS with client certificates required (verify_incoming), the
// agent works with the CA and a client certificate and a client without a
// certificate is refused.
func TestTLSClientCertificateHonoured(t *testing.T) {
	bin, err := testcluster.ConsulBinary()
	must.NoError(t, err)
	dir := t.TempDir()
	for _, args := range [][]string{{"tls", "ca", "create"}, {"tls", "cert", "create", "-server", "-dc", "dc1"},
		{"tls", "cert", "create", "-client", "-dc", "dc1"}} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		must.NoError(t, err, must.Sprint(string(out)))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	p := func(name string) string { return filepath.Join(dir, name) }
	testcluster.Dev(t, testcluster.Options{HCL: fmt.Sprintf(`ports { https = %d }
tls {
  defaults {
    ca_file = %q
    cert_file = %q
    key_file = %q
    verify_incoming = true
  }
}`, port, p("consul-agent-ca.pem"), p("dc1-server-consul-0.pem"), p("dc1-server-consul-0-key.pem"))})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := newClient(t, addr, leader.ConsulConfig{CAFile: p("consul-agent-ca.pem"),
		CertFile: p("dc1-client-consul-0.pem"), KeyFile: p("dc1-client-consul-0-key.pem")})
	a := runAgent(t, c, "n1", nil)
	l, err := a.AcquirePrimary(ctxTimeout(t, 10*time.Second), "vol1")
	must.NoError(t, err)
	must.Positive(t, l.Epoch())

	noCert := newClient(t, addr, leader.ConsulConfig{CAFile: p("consul-agent-ca.pem")})
	_, err = noCert.ReadNode(context.Background(), "n1")
	// Refused in the TLS handshake: a transport error, not an HTTP answer.
	var uerr *url.Error
	must.True(t, errors.As(err, &uerr), must.Sprintf("want a transport error, got %v", err))
	var serr api.StatusError
	must.False(t, errors.As(err, &serr))
	// The node record is written after the session (leases depend on the
	// session, the record is informational): wait for it.
	var rec leader.NodeRecord
	waitFor(t, 10*time.Second, "node record", func() bool {
		var err error
		rec, err = c.ReadNode(context.Background(), "n1")
		return err == nil
	})
	must.Eq(t, "127.0.0.1:7400", rec.ReplicaAddr)
}

// A volume check an earlier process left on this agent's service (it died
// as the volume's primary; nothing feeds the check, which goes critical)
// is removed by the next process; one it reports is kept, and so is one
// still passing (a volume it may be about to adopt).
func TestStaleVolumeCheckRemoved(t *testing.T) {
	dev := devAgent(t)
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{})
	ctx := context.Background()
	// What the dead process left in the agent: its service, and volume
	// checks on it, one whose TTL ran out.
	serviceID := leader.NodeService + "-n1"
	agent := c.API().Agent()
	must.NoError(t, agent.ServiceRegister(&api.AgentServiceRegistration{ID: serviceID, Name: leader.NodeService, Port: 7400}))
	for v, status := range map[string]string{"gone": api.HealthCritical, "kept": api.HealthCritical, "adopting": api.HealthPassing} {
		must.NoError(t, agent.CheckRegister(&api.AgentCheckRegistration{ID: leader.VolumeCheckID(v), Name: "saddlebag volume " + v,
			ServiceID: serviceID, AgentServiceCheck: api.AgentServiceCheck{TTL: "5m", Status: status}}))
	}
	agentChecks := func() map[string]*api.AgentCheck {
		checks, err := agent.ChecksWithFilter(fmt.Sprintf("ServiceID == %q", serviceID))
		must.NoError(t, err)
		return checks
	}
	must.MapContainsKeys(t, agentChecks(), []string{leader.VolumeCheckID("gone"), leader.VolumeCheckID("kept"), leader.VolumeCheckID("adopting")})

	// The next process on the node is the primary of "kept".
	next := runAgent(t, c, "n1", nil)
	must.Eq(t, serviceID, next.ServiceID())
	must.NoError(t, next.ReportVolume(ctx, "kept", leader.ClassifyVolume(1, []string{"a:1"}, []string{"a:1"})))
	waitFor(t, 10*time.Second, "the stale volume check removed", func() bool {
		_, stale := agentChecks()[leader.VolumeCheckID("gone")]
		return !stale
	})
	time.Sleep(2 * time.Second) // a few rounds of the agent's loop
	checks := agentChecks()
	must.MapNotContainsKey(t, checks, leader.VolumeCheckID("gone"))
	must.MapContainsKeys(t, checks, []string{leader.VolumeCheckID("kept"), leader.VolumeCheckID("adopting")})
	must.Eq(t, api.HealthPassing, checks[leader.VolumeCheckID("kept")].Status)
}
