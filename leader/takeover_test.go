package leader_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/leader"
)

// A process restarted at once under the same name finds the session its
// SIGKILLed predecessor left (which would never die: the new process
// feeds the check it is tied to), releases the locks it holds and
// destroys it, so it takes the leadership and its volumes' primary locks
// at once, not after lock-delay, at higher epochs than the dead process
// held. Another node's session and locks are untouched.
func TestRestartTakesOverPredecessorSession(t *testing.T) {
	dev := devAgent(t)
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{})
	ctx := ctxTimeout(t, time.Minute)
	node, err := c.API().Agent().NodeName()
	must.NoError(t, err)

	// What a dead predecessor leaves: a session named as the agent names
	// its own, with a long lock-delay, holding a primary lock and the
	// leadership lock; and another node's session holding its own lock.
	mkSession := func(name string) string {
		sid, _, err := c.API().Session().Create(&api.SessionEntry{Name: name, Node: node, LockDelay: 30 * time.Second,
			Behavior: api.SessionBehaviorRelease, NodeChecks: []string{"serfHealth"}}, nil)
		must.NoError(t, err)
		return sid
	}
	lock := func(key, sid string) uint64 {
		ok, _, err := c.API().KV().Acquire(&api.KVPair{Key: key, Session: sid, Value: []byte("dead")}, nil)
		must.NoError(t, err)
		must.True(t, ok)
		pair, _, err := c.API().KV().Get(key, nil)
		must.NoError(t, err)
		return pair.LockIndex
	}
	dead := mkSession(leader.NodeService + " n1")
	other := mkSession(leader.NodeService + " n2")
	deadEpoch := lock(c.Keys().Primary("vol1"), dead)
	lock(c.Keys().Leader(), dead)
	lock(c.Keys().Primary("vol2"), other)

	start := time.Now()
	a := runAgent(t, c, "n1", func(cfg *leader.AgentConfig) { cfg.LockDelay = 30 * time.Second })
	lease, err := a.AcquirePrimary(ctx, "vol1")
	must.NoError(t, err)
	took := time.Since(start)
	t.Logf("took over the predecessor's primary lock in %s (its lock-delay: 30s)", took)
	must.Less(t, 10*time.Second, took)
	must.Greater(t, deadEpoch, lease.Epoch())
	must.Eq(t, 1, a.Stats().TakenOver)
	se, _, err := c.API().Session().Info(dead, nil)
	must.NoError(t, err)
	must.Nil(t, se)
	lead, err := a.AcquireLeadership(ctx, "")
	must.NoError(t, err)
	must.NoError(t, lead.Release(ctx))

	// The other node's session and lock are untouched.
	se, _, err = c.API().Session().Info(other, nil)
	must.NoError(t, err)
	must.NotNil(t, se)
	holder, err := c.ReadPrimary(ctx, "vol2")
	must.NoError(t, err)
	must.Eq(t, other, holder.Session)
}

// The session name carries its process's pid and boot id: a successor
// that finds that process still running here (a graceful stop still
// releasing) waits for it to exit, at most lock-delay, before taking its
// session over.
func TestTakeoverWaitsForALivePredecessor(t *testing.T) {
	dev := devAgent(t)
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{})
	node, err := c.API().Agent().NodeName()
	must.NoError(t, err)
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	must.NoError(t, err)
	pred := exec.Command("sleep", "60")
	must.NoError(t, pred.Start())
	exited := make(chan struct{})
	go func() { _ = pred.Wait(); close(exited) }()
	t.Cleanup(func() { _ = pred.Process.Kill(); <-exited })
	name := fmt.Sprintf("%s n3 pid=%d boot=%s", leader.NodeService, pred.Process.Pid, strings.TrimSpace(string(boot)))
	sid, _, err := c.API().Session().Create(&api.SessionEntry{Name: name, Node: node, NodeChecks: []string{"serfHealth"}}, nil)
	must.NoError(t, err)

	start := time.Now()
	time.AfterFunc(time.Second, func() { _ = pred.Process.Kill() })
	a := runAgent(t, c, "n3", func(cfg *leader.AgentConfig) { cfg.LockDelay = 20 * time.Second })
	took := time.Since(start)
	t.Logf("took over %s after start (predecessor killed after 1s; lock-delay 20s)", took)
	must.Greater(t, time.Second, took)
	must.Less(t, 10*time.Second, took)
	must.Eq(t, 1, a.Stats().TakenOver)
	se, _, err := c.API().Session().Info(sid, nil)
	must.NoError(t, err)
	must.Nil(t, se)
}
