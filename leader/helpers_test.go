package leader_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
)

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Debug, Output: tWriter{t}})
}

func newClient(t testing.TB, addr string, cfg leader.ConsulConfig) *leader.Client {
	t.Helper()
	cfg.Address = addr
	c, err := leader.NewClient(cfg, testLogger(t))
	must.NoError(t, err)
	return c
}

// runAgent starts a leader.Agent for node against c and waits until it has
// a session; the agent stops when the test ends.
func runAgent(t testing.TB, c *leader.Client, node string, mod func(*leader.AgentConfig)) *leader.Agent {
	t.Helper()
	cfg := leader.AgentConfig{Client: c, Node: node, TTL: 3 * time.Second, LockDelay: 2 * time.Second,
		Address: "127.0.0.1", Port: 7400, Log: testLogger(t).Named(node),
		Record: func() leader.NodeRecord {
			return leader.NodeRecord{ReplicaAddr: "127.0.0.1:7400", CapacityBytes: 100 << 30, FreeBytes: 50 << 30,
				Labels: map[string]string{"rack": "r1"}, Version: "test"}
		}}
	if mod != nil {
		mod(&cfg)
	}
	a, err := leader.NewAgent(cfg)
	must.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = a.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	waitFor(t, 30*time.Second, "agent session", func() bool { return a.SessionID() != "" })
	return a
}

// waitFor polls cond every 20ms until it holds, failing the test after
// timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func devAgent(t testing.TB) *testcluster.Agent {
	return testcluster.Dev(t, testcluster.Options{})
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
