package primary_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/replication"
)

const volSize = 64 << 20

// The holder's Consul agent is killed: its session is invalidated, the
// other agent takes the lease with a higher epoch no sooner than
// lock-delay after the kill, and the old holder had stopped completing
// writes before that moment. All times come from this process's clock.
func TestHolderConsulAgentKilled(t *testing.T) {
	cl := testcluster.NewCluster(t, 2, testcluster.Options{})
	r1, r2 := startReplica(t, "r1"), startReplica(t, "r2")
	const lockDelay = 3 * time.Second
	ca, cb := newClient(t, cl.Clients[0].HTTPAddr), newClient(t, cl.Clients[1].HTTPAddr)
	a := runAgent(t, ca, "n1", 10*time.Second, lockDelay)
	b := runAgent(t, cb, "n2", 10*time.Second, lockDelay)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	pa := await(t, promoteAsync(ctx, config(t, a, ca, volSize, r1, r2)), 30*time.Second)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wa := startWriter(wctx, pa.Engine, 0, 0xA1)
	waitFor(t, 10*time.Second, "writes through the first primary", func() bool { return wa.count() > 100 })
	pending := promoteAsync(ctx, config(t, b, cb, volSize, r1, r2))

	killed := time.Now()
	cl.Clients[0].Kill()
	pb := await(t, pending, time.Minute)
	defer pb.Engine.Close()
	acquired := pb.Lease.AcquiredAt()
	lastA := wa.lastCompleted()
	t.Logf("kill -> new lease %s (lock-delay %s); the old primary's last write completed at kill%+.3fs, %s before the new lease",
		acquired.Sub(killed), lockDelay, lastA.Sub(killed).Seconds(), acquired.Sub(lastA))

	must.Greater(t, pa.Lease.Epoch(), pb.Lease.Epoch())
	pair, _, err := cb.API().KV().Get(cb.Keys().Primary("vol1"), &api.QueryOptions{RequireConsistent: true})
	must.NoError(t, err)
	must.Eq(t, pair.LockIndex, pb.Lease.Epoch())
	must.Eq(t, b.SessionID(), pair.Session)
	se, _, err := cb.API().Session().Info(pa.Lease.Session(), nil)
	must.NoError(t, err)
	must.Nil(t, se, must.Sprint("the killed node's session is still valid"))

	must.GreaterEq(t, lockDelay, acquired.Sub(killed), must.Sprint("lease taken sooner than lock-delay after the kill"))
	must.True(t, lastA.Before(acquired), must.Sprint("the old primary completed a write after the new one took the lease"))
	must.Eq(t, 0, wa.completedAfter(acquired))
	held, holds := pa.Lease.Held()
	must.True(t, held && holds >= 1, must.Sprint("the cut-off primary is not holding I/O"))

	// The new primary serves.
	buf := bytes.Repeat([]byte{0xB2}, 4096)
	must.NoError(t, pb.Engine.WriteAt(ctx, buf, 0, true))
	got := make([]byte, 4096)
	must.NoError(t, pb.Engine.ReadAt(ctx, got, 0))
	must.Eq(t, buf, got)
	// The old primary's held writes never complete.
	wcancel()
	must.Error(t, wa.finish(t))
	must.Eq(t, 0, wa.completedAfter(acquired))
}

// A primary cut off from Consul keeps writing through a real engine to
// real replica servers: once the new primary has promised its epoch, not
// one of the old primary's writes is accepted by any replica.
func TestCutOffPrimaryWritesRefusedAfterPromise(t *testing.T) {
	dev := testcluster.Dev(t, testcluster.Options{})
	proxy, err := testcluster.NewProxy("127.0.0.1", dev.HTTPAddr)
	must.NoError(t, err)
	pctx, pcancel := context.WithCancel(context.Background())
	pdone := make(chan struct{})
	go func() { defer close(pdone); proxy.Serve(pctx) }()
	t.Cleanup(func() { pcancel(); <-pdone })

	r1, r2 := startReplica(t, "r1"), startReplica(t, "r2")
	replicas := []*testReplica{r1, r2}
	const lockDelay = 2 * time.Second
	ca, cb := newClient(t, proxy.Addr()), newClient(t, dev.HTTPAddr)
	// The cut-off node's TTL check goes critical 1s after its last feed,
	// which invalidates its session.
	a := runAgent(t, ca, "n1", time.Second, lockDelay)
	b := runAgent(t, cb, "n2", 10*time.Second, lockDelay)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	pa := await(t, promoteAsync(ctx, config(t, a, ca, volSize, r1, r2)), 30*time.Second)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var writers []*writer
	for i := range 4 {
		writers = append(writers, startWriter(wctx, pa.Engine, int64(i)<<20, 0xA1))
	}
	waitFor(t, 10*time.Second, "writes through the first primary", func() bool { return writers[0].count() > 100 })
	pending := promoteAsync(ctx, config(t, b, cb, volSize, r1, r2))

	cut := time.Now()
	proxy.Cut()
	pb := await(t, pending, time.Minute)
	defer pb.Engine.Close()
	promised := time.Now() // Promote returns after the engine promised the epoch on every replica
	acquired := pb.Lease.AcquiredAt()
	t.Logf("cut -> new lease %s, -> promised %s", acquired.Sub(cut), promised.Sub(cut))

	rec, _, err := cb.ReadInSync(ctx, "vol1")
	must.NoError(t, err)
	must.Eq(t, pb.Lease.Epoch(), rec.Epoch)

	applied := make([]int64, len(replicas))
	stale := int64(0)
	for i, r := range replicas {
		applied[i] = r.server.Stats.Applied.Load()
		stale += r.server.Stats.StaleEpoch.Load()
	}
	// The old primary, still believing it may be primary, sends writes
	// to fresh blocks: every one is refused and none completes.
	const tries = 20
	base := int64(32 << 20)
	for i := range tries {
		err := pa.Engine.WriteAt(ctx, bytes.Repeat([]byte{0xA1}, 4096), base+int64(i)*4096, false)
		must.ErrorIs(t, err, replication.ErrFenced)
	}
	for i, r := range replicas {
		must.Eq(t, applied[i], r.server.Stats.Applied.Load(), must.Sprintf("replica %s accepted a write from the old primary", r.addr))
	}
	var staleAfter int64
	for _, r := range replicas {
		staleAfter += r.server.Stats.StaleEpoch.Load()
	}
	must.Greater(t, stale, staleAfter, must.Sprint("the old primary's writes never reached a replica"))

	// The new primary's writes are accepted, exactly once each, and the
	// old primary's blocks hold none of its data.
	const ours = 10
	for i := range ours {
		must.NoError(t, pb.Engine.WriteAt(ctx, bytes.Repeat([]byte{0xB2}, 4096), int64(48<<20)+int64(i)*4096, false))
	}
	for i, r := range replicas {
		must.Eq(t, applied[i]+ours, r.server.Stats.Applied.Load())
	}
	got := make([]byte, 4096)
	for i := range tries {
		must.NoError(t, pb.Engine.ReadAt(ctx, got, base+int64(i)*4096))
		must.Eq(t, make([]byte, 4096), got)
	}

	// No write of the old primary completed once the new one held the
	// lease, and every writer ends with an error.
	wcancel()
	for _, w := range writers {
		must.Error(t, w.finish(t))
		must.Eq(t, 0, w.completedAfter(acquired))
		must.True(t, w.lastCompleted().Before(acquired))
	}
	held, _ := pa.Lease.Held()
	must.True(t, held || pa.Lease.Err() != nil)
	must.True(t, pa.Engine.Fenced())
}
