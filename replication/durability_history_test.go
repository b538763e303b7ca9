package replication

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// Which replicas a new primary trusts, forced deterministically (issue
// #10): wiped replicas, lost or rolled-back in-sync records, generations
// a newer primary could not see, connections replaced or abandoned.

// Scenario 1: a replica whose data directory was lost, named in the
// in-sync record, while the other replica's node is down. It must never
// be served as the volume (it would read as zeroes and be formatted), and
// once the other comes back the volume's data must come from the other.
func TestWipedReplicaNeverServed(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir()}
	a, b := startTestReplica(t, dirs[0]), startTestReplica(t, dirs[1])
	const size = 8 << 20
	e := startTestEngine(t, "vol", size, 1, nil, a, b)
	ctx := context.Background()
	data := bytes.Repeat([]byte("precious"), 512)
	must.NoError(t, e.WriteAt(ctx, data, 1<<20, true))
	must.NoError(t, e.Shutdown(ctx))
	rec := replicaMembership(t, a, "vol") // what Consul recorded
	must.Eq(t, 2, len(rec.Replicas))

	// A's disk is replaced (same address, empty data dir); B is down.
	a.stop()
	b.stop()
	must.NoError(t, os.RemoveAll(dirs[0]))
	a = startTestReplicaAt(t, dirs[0], a.addr)
	cfg := engineConfig(t, "vol", size, 2, a, b)
	cfg.Recorded = &rec
	_, err := StartEngine(ctx, cfg)
	must.ErrorIs(t, err, ErrNoReplicas)
	must.StrContains(t, err.Error(), "no history")

	// Not even with the record lost: A's emptiness proves nothing.
	cfg.Epoch, cfg.Recorded = 3, nil
	_, err = StartEngine(ctx, cfg)
	must.ErrorIs(t, err, ErrNoReplicas)

	// B comes back: it is the source, A gets a full copy from it.
	b = startTestReplicaAt(t, dirs[1], b.addr)
	cfg.Epoch, cfg.Recorded = 4, &rec
	e2, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e2.Close()
	st := waitInSync(t, e2, 2)
	must.Eq(t, "full", st.Replicas[0].Resync.Mode)
	must.Eq(t, data, readBack(t, e2, 1<<20, len(data)))
	must.NoError(t, e2.Shutdown(ctx))
	must.Eq(t, fileSum(t, a.store.DataPath("vol")), fileSum(t, b.store.DataPath("vol")))
}

// Scenario 6: the new primary OPENs both replicas; then the old primary
// makes a cold extent hot on both; then B promises the new epoch; then the
// old primary writes the extent: A takes it (no promise yet), B refuses it
// (never acknowledged); then A promises. Had the new primary used the
// activity logs of the OPEN replies, it would not reconcile that extent
// and A and B would differ there forever.
func TestNewPrimarySeesWritesBeforeItsPromise(t *testing.T) {
	a, b := startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())
	const size = 64 << 20
	ctx := context.Background()
	old := startTestEngine(t, "vol", size, 1, nil, a, b)
	must.NoError(t, old.WriteAt(ctx, []byte("warm"), 0, true))
	gen := replicaMembership(t, a, "vol").Gen

	const cold = 40 << 20
	aOpened := make(chan struct{})
	var onceA, onceB sync.Once
	proxyA := startFrameProxy(t, a.addr, func(f wire.Frame) {
		if f.Type != wire.FramePromise {
			return
		}
		onceA.Do(func() {
			close(aOpened)
			// Wait for B's promise, then the old primary writes.
			deadline := time.Now().Add(10 * time.Second)
			for promisedEpoch(b, "vol") < 2 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			err := old.WriteAt(ctx, []byte("cold"), cold, true)
			must.Error(t, err) // refused by B: never acknowledged
		})
	})
	proxyB := startFrameProxy(t, b.addr, func(f wire.Frame) {
		if f.Type != wire.FramePromise {
			return
		}
		onceB.Do(func() {
			<-aOpened // both OPENs answered
			x, _ := extentSpan(cold, 4)
			must.NoError(t, old.alAcquire(ctx, x, x)) // hot on A and B
			old.alRelease(x, x)
		})
	})
	cfg := engineConfig(t, "vol", size, 2)
	cfg.Replicas = []ReplicaConfig{{Addr: proxyA.ln.Addr().String()}, {Addr: proxyB.ln.Addr().String()}}
	cfg.Recorded = &wire.Membership{Gen: gen} // both are members (under their own addresses)
	cfg.Timeout = 10 * time.Second            // nothing here waits for a timeout; a loaded CI machine checksums 4 MiB extents slowly
	e2, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e2.Close()
	must.Eq(t, 2, e2.Status().InSync)
	must.NoError(t, e2.Shutdown(ctx))
	must.Eq(t, fileSum(t, a.store.DataPath("vol")), fileSum(t, b.store.DataPath("vol")))
}

// Scenario 7: the in-sync record is lost (or rolled back) after B was
// dropped and A took writes alone. B must not count as current; with A
// unreachable too, nothing may be served.
func TestLostInSyncRecordDoesNotServeStaleReplica(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir()}
	a, b := startTestReplica(t, dirs[0]), startTestReplica(t, dirs[1])
	const size = 8 << 20
	ctx := context.Background()
	e := startTestEngine(t, "vol", size, 1, nil, a, b)
	must.NoError(t, e.WriteAt(ctx, []byte("old!"), 0, true))
	oldRecord := replicaMembership(t, b, "vol")
	b.stop()
	must.NoError(t, e.WriteAt(ctx, []byte("new!"), 0, true)) // B is dropped; A alone has it
	e.Close()
	b = startTestReplicaAt(t, dirs[1], b.addr)

	// Lost (kv delete, data loss), and rolled back by more than the one
	// generation a crash explains (an old snapshot restored). A record
	// rolled back to exactly the stale replica's own view, with the newer
	// replica unreachable, cannot be told from a current one: the README
	// says what operators restoring Consul do.
	_ = oldRecord
	for round, rec := range []*wire.Membership{nil, {Gen: 0, Replicas: []string{a.addr, b.addr}}} {
		epoch := uint64(10 * (round + 1))
		// A is unreachable: B's history says A was in its set and may be
		// newer, so nothing is served.
		a.stop()
		cfg := engineConfig(t, "vol", size, epoch, a, b)
		cfg.Recorded = rec
		_, err := StartEngine(ctx, cfg)
		must.ErrorIs(t, err, ErrNoReplicas, must.Sprintf("record %v", rec))
		must.True(t, errors.Is(err, ErrHistoryUnknown), must.Sprintf("record %v: %v", rec, err))

		// With A back, A is current and B is resynced from it.
		a = startTestReplicaAt(t, dirs[0], a.addr)
		cfg = engineConfig(t, "vol", size, epoch+1, a, b)
		cfg.Recorded = rec
		hook := &recordingHook{}
		cfg.Hook = hook
		e2, err := StartEngine(ctx, cfg)
		must.NoError(t, err)
		must.Eq(t, []string{a.addr}, hook.first()) // B started out of sync
		waitInSync(t, e2, 2)
		must.Eq(t, []byte("new!"), readBack(t, e2, 0, 4))
		must.NoError(t, e2.Shutdown(ctx))
		must.Eq(t, fileSum(t, a.store.DataPath("vol")), fileSum(t, b.store.DataPath("vol")))
		// The next round starts from B stale again.
		b.stop()
		must.NoError(t, os.RemoveAll(dirs[1]))
		must.NoError(t, os.MkdirAll(dirs[1], 0o700))
		b = startTestReplicaAt(t, dirs[1], b.addr)
		e3, err := StartEngine(ctx, engineConfig(t, "vol", size, epoch+2, a, b))
		must.NoError(t, err)
		waitInSync(t, e3, 2)
		b.stop()
		must.NoError(t, e3.WriteAt(ctx, []byte("new!"), 0, true))
		e3.Close()
		oldRecord = replicaMembership(t, b, "vol")
		b = startTestReplicaAt(t, dirs[1], b.addr)
	}
}

// A membership change that failed on one member (it got the new set, its
// reply was lost) and is then recorded without it must get a new
// generation: two sets under one generation let a later primary, with the
// record lost, take the dropped member for a current one.
func TestFailedMembershipAttemptBurnsItsGeneration(t *testing.T) {
	a, b, c := startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())
	var cut atomic.Bool
	proxyB := startFrameProxyAfter(t, b.addr, func(wire.Frame) {}, func(f wire.Frame) bool { return f.Type == wire.FrameMembership && cut.Load() })
	cfg := engineConfig(t, "vol", 1<<20, 1, a, c)
	cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: proxyB.ln.Addr().String()})
	ctx := context.Background()
	e, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e.Close()
	waitInSync(t, e, 3)
	cut.Store(true)
	c.stop()
	must.NoError(t, e.WriteAt(ctx, []byte("x"), 0, false)) // drops c, then b
	must.Eq(t, 1, e.Status().InSync)
	ma := replicaMembership(t, a, "vol")
	must.SliceNotContains(t, ma.Replicas, proxyB.ln.Addr().String())
	deadline := time.Now().Add(5 * time.Second)
	for {
		mb := replicaMembership(t, b, "vol")
		if slices.Contains(mb.Replicas, proxyB.ln.Addr().String()) && len(mb.Replicas) == 2 {
			must.Greater(t, mb.Gen, ma.Gen, must.Sprintf("a: %+v, b: %+v", ma, mb))
			return
		}
		must.True(t, time.Now().Before(deadline), must.Sprintf("b never took the attempted set: %+v", mb))
		time.Sleep(10 * time.Millisecond)
	}
}

// A primary that found some replicas unreachable cannot know which
// generations an older primary wrote to them. Its own sets must still
// outrank those: a later primary that sees both must take its set, which
// holds the writes it acknowledged.
func TestNewerPrimaryOutranksGenerationsItCouldNotSee(t *testing.T) {
	dirB := t.TempDir()
	a, b := startTestReplica(t, t.TempDir()), startTestReplica(t, dirB)
	const size = 1 << 20
	ctx := context.Background()
	e1, err := StartEngine(ctx, engineConfig(t, "vol", size, 1, a, b))
	must.NoError(t, err)
	must.NoError(t, e1.WriteAt(ctx, []byte("old"), 0, true))
	e1.Close()
	// An older primary (epoch 2) wrote generations to b alone that never
	// reached Consul (nothing it acknowledged depended on them).
	v, _, err := b.store.Open("vol", size, false)
	must.NoError(t, err)
	must.NoError(t, v.SetMembership(2, wire.Membership{Gen: epochGenBase(2) + 7, Replicas: []string{b.addr}}))
	must.NoError(t, v.Close())
	b.stop()
	// Epoch 3 sees only a, uses the record (epoch 1's: both replicas),
	// and acknowledges a write.
	rec := replicaMembership(t, a, "vol")
	cfg := engineConfig(t, "vol", size, 3, a, b)
	cfg.Recorded = &rec
	e3, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	must.NoError(t, e3.WriteAt(ctx, []byte("new"), 0, true))
	e3.Close()
	// Epoch 4 sees both: a's set (epoch 3's) is the newer one.
	b = startTestReplicaAt(t, dirB, b.addr)
	rec3 := replicaMembership(t, a, "vol")
	must.Greater(t, replicaMembership(t, b, "vol").Gen, rec3.Gen)
	cfg = engineConfig(t, "vol", size, 4, a, b)
	cfg.Recorded = &rec3
	e4, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e4.Close()
	must.Eq(t, "new", string(readBack(t, e4, 0, 3)))
}

// A primary that redials a replica (its connection timed out, say) may
// still have frames of the old connection in flight: in socket buffers,
// or in a proxy, the replica reads them after the new connection's
// promise, and a late write overwrites what the new connection's resync
// copied since (seed 420912478: 7 blocks different). The replica must
// refuse every request of a connection its primary has replaced.
func TestReplacedConnectionIsRefused(t *testing.T) {
	r := startTestReplica(t, t.TempDir())
	ctx := context.Background()
	log := testLogger(t)
	const owner = 42
	c1, _, err := dialReplica(ctx, nil, r.addr, "vol", 1<<20, 1, owner, true, 2*time.Second, log)
	must.NoError(t, err)
	defer c1.close()
	_, err = c1.do(wire.Frame{Type: wire.FrameWrite, Offset: 0, Payload: bytes.Repeat([]byte{1}, 4096)})
	must.NoError(t, err)
	c2, _, err := dialReplica(ctx, nil, r.addr, "vol", 1<<20, 1, owner, false, 2*time.Second, log)
	must.NoError(t, err)
	defer c2.close()
	_, err = c2.do(wire.Frame{Type: wire.FrameWrite, Offset: 0, Payload: bytes.Repeat([]byte{2}, 4096)})
	must.NoError(t, err)

	// The old connection's late write, trim and bitmap are refused.
	for _, f := range []wire.Frame{
		{Type: wire.FrameWrite, Offset: 0, Payload: bytes.Repeat([]byte{3}, 4096)},
		{Type: wire.FrameTrim, Offset: 0, Length: 4096},
		{Type: wire.FramePutBitmap, Payload: wire.PeerPayload("x", nil)},
	} {
		_, err = c1.do(f)
		must.ErrorIs(t, err, wire.ErrSuperseded, must.Sprintf("%s", f.Type))
	}
	reply, err := c2.do(wire.Frame{Type: wire.FrameRead, Offset: 0, Length: 4096})
	must.NoError(t, err)
	must.Eq(t, bytes.Repeat([]byte{2}, 4096), reply.Payload)
}

// A write in flight when every in-sync replica's connection breaks may
// reach some of them and not others; when it is then abandoned (its
// caller gives up while I/O is held), the replicas that come back must
// not differ there: the first back is the volume's copy, and the others
// get the abandoned write's range from it (seed 92122460).
func TestAbandonedWriteLeavesNoDifferenceBetweenReplicas(t *testing.T) {
	a, b := startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())
	const woff = 4 << 20
	var armed atomic.Bool
	proxyA := startFrameProxyAfter(t, a.addr, func(wire.Frame) {}, func(f wire.Frame) bool {
		// A applies W, and its reply is lost with its connection.
		return armed.Load() && f.Type == wire.FrameWrite && f.Offset == woff
	})
	proxyB := startFrameProxy(t, b.addr, func(wire.Frame) {})
	const size = 16 << 20
	cfg := engineConfig(t, "vol", size, 1)
	cfg.Replicas = []ReplicaConfig{{Addr: proxyA.ln.Addr().String()}, {Addr: proxyB.ln.Addr().String()}}
	ctx := context.Background()
	e, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e.Close()
	waitInSync(t, e, 2)
	must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), woff, true))

	// B's connection is gone before W; A's goes with W's reply.
	proxyA.refuse.Store(true)
	proxyB.refuse.Store(true)
	proxyB.cut()
	armed.Store(true)
	wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	err = e.WriteAt(wctx, bytes.Repeat([]byte{2}, 4096), woff, false)
	cancel()
	must.Error(t, err) // abandoned while every in-sync replica was away
	armed.Store(false)

	// A comes back first, then B.
	proxyA.refuse.Store(false)
	waitConnected := func(addr string) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			e.stateMu.Lock()
			ok := slices.ContainsFunc(e.peers, func(p *peer) bool {
				return p.cfg.Addr == addr && p.state == StateInSync && p.client != nil && p.client.failure() == nil
			})
			e.stateMu.Unlock()
			if ok {
				return
			}
			must.True(t, time.Now().Before(deadline), must.Sprintf("%s never reconnected: %+v", addr, e.Status()))
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitConnected(proxyA.ln.Addr().String())
	proxyB.refuse.Store(false)
	waitConnected(proxyB.ln.Addr().String())
	must.NoError(t, e.Shutdown(ctx))
	da, db := replicaData(t, a), replicaData(t, b)
	must.Eq(t, bytes.Repeat([]byte{2}, 4096), da[woff:woff+4096]) // A applied it
	must.True(t, bytes.Equal(da, db), must.Sprintf("B differs from A at %d: %v", woff, db[woff:woff+4]))
}
