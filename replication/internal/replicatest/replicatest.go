package replicatest

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/replica"
)

// Logger returns a logger that writes to t's output, at debug level.
func Logger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: t.Output()})
}

// Replica is an in-process replica server on a loopback port, stopped at
// the test's cleanup.
type Replica struct {
	Addr  string
	Store *replica.Store
	stop  func()
}

// Stop stops the server (a replica going down); cleanup does it too.
func (r *Replica) Stop() { r.stop() }

// StartReplica starts a replica server storing into dir.
func StartReplica(t testing.TB, dir string) *Replica {
	return StartReplicaAt(t, dir, "127.0.0.1:0")
}

// StartReplicaAt starts a replica server on addr (a restarted replica
// comes back on its old address).
func StartReplicaAt(t testing.TB, dir, addr string) *Replica {
	t.Helper()
	store, err := replica.OpenStore(dir, Logger(t))
	must.NoError(t, err)
	ln, err := net.Listen("tcp", addr)
	must.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	srv := replica.NewServer(store, Logger(t))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx, ln)
	}()
	r := &Replica{Addr: ln.Addr().String(), Store: store}
	r.stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(r.stop)
	return r
}

// EngineConfig is the configuration StartEngine uses for volume over
// replicas: a 5 s replica timeout and a 50 ms reconnect interval keep
// tests short. Change it and pass it to replication.StartEngine for
// anything else.
func EngineConfig(t testing.TB, volume string, size int64, epoch uint64, replicas ...*Replica) replication.EngineConfig {
	cfg := replication.EngineConfig{Volume: volume, Size: size, Epoch: epoch, Log: Logger(t), Timeout: 5 * time.Second,
		ReconnectInterval: 50 * time.Millisecond}
	for _, r := range replicas {
		cfg.Replicas = append(cfg.Replicas, replication.ReplicaConfig{Addr: r.Addr})
	}
	return cfg
}

// StartEngine starts the primary engine of volume over replicas at
// epoch, closed at the test's cleanup.
func StartEngine(t testing.TB, volume string, size int64, epoch uint64, replicas ...*Replica) *replication.Engine {
	t.Helper()
	e, err := replication.StartEngine(context.Background(), EngineConfig(t, volume, size, epoch, replicas...))
	must.NoError(t, err)
	t.Cleanup(e.Close)
	return e
}
