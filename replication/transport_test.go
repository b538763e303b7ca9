package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/replica"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// TestGuardRefusesBeforeAnyFrame: a server whose replica.Guard denies a peer
// answers its first request with wire.StatusDenied and the guard's reason,
// closes the connection, and applies nothing; a guard that fails (a bad
// handshake) just closes it; an admitting guard's connection serves
// normally, and the engine reaches its replicas through its Dialer.
func TestGuardRefusesBeforeAnyFrame(t *testing.T) {
	type result struct{ err error }
	var verdict atomic.Pointer[result]
	verdict.Store(&result{fmt.Errorf("%w: spiffe://x/svc/intruder may not reach saddlebag-node", wire.ErrPermissionDenied)})
	store, err := replica.OpenStore(t.TempDir(), testLogger(t))
	must.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	srv := replica.NewServer(store, testLogger(t)).WithGuard(func(ctx context.Context, c net.Conn) (net.Conn, string, error) {
		return c, "spiffe://x/svc/intruder", verdict.Load().err
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx, ln)
	}()
	defer func() {
		cancel()
		<-done
	}()
	r := &testReplica{addr: ln.Addr().String(), store: store, server: srv}

	_, err = CreateReplica(context.Background(), nil, r.addr, "v", 1<<20, time.Second)
	must.ErrorIs(t, err, wire.ErrPermissionDenied)
	must.StrContains(t, err.Error(), "spiffe://x/svc/intruder may not reach saddlebag-node")
	must.Eq(t, int64(1), r.server.Stats.Refused.Load())

	verdict.Store(&result{errors.New("tls: bad certificate")})
	err = DeleteReplica(context.Background(), nil, r.addr, "v", time.Second)
	must.Error(t, err)
	must.False(t, errors.Is(err, wire.ErrPermissionDenied))
	must.Eq(t, int64(2), r.server.Stats.Refused.Load())
	must.Eq(t, int64(0), r.server.Stats.Applied.Load())
	_, _, err = r.store.Open("v", 1<<20, false)
	must.ErrorIs(t, err, wire.ErrVolumeNotFound, must.Sprint("a refused create made the replica"))

	verdict.Store(&result{})
	var dials atomic.Int64
	dial := Dialer(func(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	})
	created, err := CreateReplica(context.Background(), dial, r.addr, "v", 1<<20, time.Second)
	must.NoError(t, err)
	must.True(t, created)
	e, err := StartEngine(context.Background(), EngineConfig{Volume: "v", Size: 1 << 20, Epoch: 1, Timeout: 5 * time.Second,
		Replicas: []ReplicaConfig{{Addr: r.addr}}, Dial: dial, Log: testLogger(t)})
	must.NoError(t, err)
	defer e.Close()
	err = e.WriteAt(context.Background(), make([]byte, 4096), 0, false)
	must.NoError(t, err)
	must.Eq(t, int64(2), dials.Load())
}

// TestProbeDoesWhatItSays: against a server that lets it in, Probe's
// promise, write and read take effect, and its delete is refused only
// because a primary holds the replica open (so a Probe refused elsewhere
// is refused by the transport, not by a broken probe); replica.ReadMeta reads
// the promise from disk while the store has the replica open.
func TestProbeDoesWhatItSays(t *testing.T) {
	dir := t.TempDir()
	r := startTestReplica(t, dir)
	ctx := context.Background()
	holder := rawClient(t, r.addr, 9)
	rawOpen(t, holder, "v", 1<<20)
	data := bytes.Repeat([]byte{0xee}, 4096)
	res := Probe(ctx, nil, r.addr, "v", 1<<20, 9, 8192, data, 5*time.Second)
	must.NoError(t, res.Promise)
	must.NoError(t, res.Write)
	must.NoError(t, res.Read)
	must.ErrorIs(t, res.Delete, wire.ErrReplicaBusy)
	m, err := replica.ReadMeta(dir, "v")
	must.NoError(t, err)
	must.Eq(t, uint64(9), m.Epoch)
	got := make([]byte, 4096)
	f, err := os.Open(r.store.DataPath("v"))
	must.NoError(t, err)
	defer f.Close()
	_, err = f.ReadAt(got, 8192)
	must.NoError(t, err)
	must.Eq(t, data, got)
}
