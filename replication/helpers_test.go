package replication

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/replica"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// testLogger returns a logger that writes through t.
func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: tWriter{t}})
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// testReplica is an in-process replica server on a loopback port.
type testReplica struct {
	addr   string
	store  *replica.Store
	files  replica.FileSystem // the store's (nil: the real file system)
	server *replica.Server
	stop   func()
}

func startTestReplica(t testing.TB, dir string) *testReplica {
	return startTestReplicaAt(t, dir, "127.0.0.1:0")
}

// startTestReplicaAt starts a replica server on addr (a restarted replica
// comes back on its old address).
func startTestReplicaAt(t testing.TB, dir, addr string) *testReplica {
	return startTestReplicaBoot(t, dir, addr, "")
}

// startTestReplicaBoot starts a replica server whose host reports boot
// id boot ("" keeps the real one): a new one stands for a host that
// restarted (after a power loss).
func startTestReplicaBoot(t testing.TB, dir, addr, boot string) *testReplica {
	t.Helper()
	return startTestReplicaWith(t, dir, addr, replica.StoreOptions{BootID: boot})
}

// startTestReplicaWith starts a replica server whose store has opts.
func startTestReplicaWith(t testing.TB, dir, addr string, opts replica.StoreOptions) *testReplica {
	t.Helper()
	store, err := replica.OpenStoreWith(dir, testLogger(t), opts)
	must.NoError(t, err)
	ln, err := net.Listen("tcp", addr)
	must.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	srv := replica.NewServer(store, testLogger(t))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx, ln)
	}()
	r := &testReplica{addr: ln.Addr().String(), store: store, files: opts.Files, server: srv}
	r.stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(r.stop)
	return r
}

func startTestEngine(t testing.TB, volume string, size int64, epoch uint64, hook InSyncHook, replicas ...*testReplica) *Engine {
	t.Helper()
	cfg := EngineConfig{Volume: volume, Size: size, Epoch: epoch, Hook: hook, Log: testLogger(t), Timeout: 5 * time.Second,
		ReconnectInterval: 50 * time.Millisecond}
	for _, r := range replicas {
		cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: r.addr})
	}
	e, err := StartEngine(context.Background(), cfg)
	must.NoError(t, err)
	t.Cleanup(e.Close)
	return e
}

var _ io.Writer = tWriter{}

var netDialer net.Dialer

func readAll(c net.Conn) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return io.ReadAll(c)
}

// waitInSync waits until the engine has n replicas in sync.
func waitInSync(t testing.TB, e *Engine, n int) EngineStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := e.Status()
		if st.InSync == n {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("in-sync replicas: %d, want %d; status %+v", st.InSync, n, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// replicaMembership reads the membership a replica recorded, from its
// metadata file.
func replicaMembership(t testing.TB, r *testReplica, volume string) wire.Membership {
	t.Helper()
	m, err := replica.ReadMetaOn(r.files, r.store.Dir(), volume)
	must.NoError(t, err)
	return m.Membership
}

// promisedEpoch returns the epoch r's replica of volume has promised, as
// its metadata file holds it (0 when it cannot be read).
func promisedEpoch(r *testReplica, volume string) uint64 {
	m, err := replica.ReadMeta(r.store.Dir(), volume)
	if err != nil {
		return 0
	}
	return m.Epoch
}

// waitReplicaState waits until e reports the replica at addr in state.
func waitReplicaState(t testing.TB, e *Engine, addr string, state ReplicaState) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := e.Status()
		for _, r := range st.Replicas {
			if r.Addr == addr && r.State == state {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica %s never %s; status %+v", addr, state, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
