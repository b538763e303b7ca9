package primary_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/primary"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/replica"
)

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

func testLogger(t testing.TB, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Info, Output: tWriter{t}})
}

// testReplica is an in-process replica server on a loopback port.
type testReplica struct {
	addr   string
	server *replica.Server
}

func startReplica(t testing.TB, name string) *testReplica {
	t.Helper()
	store, err := replica.OpenStore(t.TempDir(), testLogger(t, name))
	must.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	srv := replica.NewServer(store, testLogger(t, name))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ctx, ln) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &testReplica{addr: ln.Addr().String(), server: srv}
}

func newClient(t testing.TB, addr string) *leader.Client {
	t.Helper()
	c, err := leader.NewClient(leader.ConsulConfig{Address: addr}, testLogger(t, "consul"))
	must.NoError(t, err)
	return c
}

func runAgent(t testing.TB, c *leader.Client, node string, ttl, lockDelay time.Duration) *leader.Agent {
	t.Helper()
	a, err := leader.NewAgent(leader.AgentConfig{Client: c, Node: node, TTL: ttl, LockDelay: lockDelay, Log: testLogger(t, node)})
	must.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = a.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	waitFor(t, 30*time.Second, node+" session", func() bool { return a.SessionID() != "" })
	return a
}

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

func config(t testing.TB, a *leader.Agent, c *leader.Client, size int64, replicas ...*testReplica) primary.Config {
	cfg := primary.Config{Agent: a, Client: c, Volume: "vol1", Size: size, Timeout: 5 * time.Second, Log: testLogger(t, a.Node())}
	for _, r := range replicas {
		cfg.Replicas = append(cfg.Replicas, replication.ReplicaConfig{Addr: r.addr})
	}
	return cfg
}

// writer writes 4 KiB blocks of fill in a loop through a device and
// records when each write completed, on the test process's clock.
type writer struct {
	mu    sync.Mutex
	n     int
	last  time.Time
	err   error
	done  chan struct{}
	times []time.Time
}

func startWriter(ctx context.Context, dev replication.Device, base int64, fill byte) *writer {
	w := &writer{done: make(chan struct{})}
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = fill
	}
	go func() {
		defer close(w.done)
		for i := int64(0); ctx.Err() == nil; i++ {
			err := dev.WriteAt(ctx, buf, base+(i%256)*4096, false)
			now := time.Now()
			w.mu.Lock()
			if err != nil {
				w.err = err
				w.mu.Unlock()
				return
			}
			w.n++
			w.last = now
			w.times = append(w.times, now)
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// completedAfter counts writes completed at or after t.
func (w *writer) completedAfter(t time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, c := range w.times {
		if !c.Before(t) {
			n++
		}
	}
	return n
}

func (w *writer) lastCompleted() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// finish waits for the writer to stop and returns the error it stopped on.
func (w *writer) finish(t testing.TB) error {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		t.Fatal("writer did not stop")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		return errors.New("writer stopped without an error")
	}
	return w.err
}

type promoted struct {
	p   *primary.Primary
	err error
}

// promoteAsync runs primary.Promote in the background.
func promoteAsync(ctx context.Context, cfg primary.Config) <-chan promoted {
	ch := make(chan promoted, 1)
	go func() {
		p, err := primary.Promote(ctx, cfg)
		ch <- promoted{p, err}
	}()
	return ch
}

func await(t testing.TB, ch <-chan promoted, timeout time.Duration) *primary.Primary {
	t.Helper()
	select {
	case r := <-ch:
		must.NoError(t, r.err)
		return r.p
	case <-time.After(timeout):
		t.Fatalf("no promotion within %s", timeout)
	}
	return nil
}
