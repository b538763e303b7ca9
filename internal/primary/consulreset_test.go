package primary_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/primary"
	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/replication"
)

// TestConsulResetDoesNotStrandVolume (issue #10, scenario 7): Consul lost
// its data, so the primary lock's LockIndex restarts far below the epoch
// the replicas have promised, and the in-sync record is gone. A new
// primary must still come up (above every promise, which fences whoever
// made them), serve the data the replicas hold, and keep epochs growing.
func TestConsulResetDoesNotStrandVolume(t *testing.T) {
	r1, r2 := startReplica(t, "r1"), startReplica(t, "r2")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The volume's life under the Consul that was lost: a primary at
	// epoch 50 wrote data.
	old, err := replication.StartEngine(ctx, replication.EngineConfig{Volume: "vol1", Size: volSize, Epoch: 50,
		Replicas: []replication.ReplicaConfig{{Addr: r1.addr}, {Addr: r2.addr}}, Log: testLogger(t, "old")})
	must.NoError(t, err)
	data := bytes.Repeat([]byte("survives a consul reset "), 100)
	must.NoError(t, old.WriteAt(ctx, data, 1<<20, true))
	must.NoError(t, old.Shutdown(ctx))

	// A brand-new Consul: LockIndex starts at 1, no in-sync record.
	dev := testcluster.Dev(t, testcluster.Options{})
	c := newClient(t, dev.HTTPAddr)
	a := runAgent(t, c, "n1", 10*time.Second, time.Second)
	p, err := primary.Promote(ctx, config(t, a, c, volSize, r1, r2))
	must.NoError(t, err)
	must.Greater(t, 50, p.Lease.Epoch())
	t.Logf("promoted at epoch %d after the lock index restarted", p.Lease.Epoch())
	buf := make([]byte, len(data))
	must.NoError(t, p.Engine.ReadAt(ctx, buf, 1<<20))
	must.Eq(t, data, buf)
	must.Eq(t, 2, p.Engine.Status().InSync)
	first := p.Lease.Epoch()
	must.NoError(t, p.Demote(ctx))

	// The next primary reads the floor: its epoch is higher still, with
	// no second refusal.
	p2, err := primary.Promote(ctx, config(t, a, c, volSize, r1, r2))
	must.NoError(t, err)
	defer p2.Demote(context.Background())
	must.Greater(t, first, p2.Lease.Epoch())
	must.NoError(t, p2.Engine.ReadAt(ctx, buf, 1<<20))
	must.Eq(t, data, buf)
}
