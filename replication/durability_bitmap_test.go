package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/replica"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// Bitmaps around a resync, forced deterministically (issue #10): what a
// failed or racing write leaves a resync target, which bitmaps a replica
// holds, and when a bitmap is no longer trusted.

// A write that fails on the last in-sync replica (its disk is full) may
// have been applied by a replica being resynced. That replica must get
// the range back from the copy even when its resync ended (aborted by a
// broken connection) between its reply and the failure: else its next
// bitmap resync skips the range and it rejoins different from the copy.
func TestFailedWriteRepairedOnAbortedResyncTarget(t *testing.T) {
	var full atomic.Bool
	a := startTestReplicaWith(t, t.TempDir(), "127.0.0.1:0", replica.StoreOptions{Files: fullFS{full: &full}})
	b := startTestReplica(t, t.TempDir())
	const size = 16 << 20
	const w2off = 12 << 20
	var armed atomic.Bool
	var onceA sync.Once
	atA, releaseA := make(chan struct{}), make(chan struct{})
	proxyA := startFrameProxy(t, a.addr, func(f wire.Frame) {
		if f.Type == wire.FrameWrite && f.Offset == w2off && armed.Load() {
			onceA.Do(func() { close(atA) })
			<-releaseA
		}
	})
	// B's proxy reports B's replies to the resync's copy of its one
	// missed chunk and to W2.
	var chunkID, w2ID atomic.Uint64
	chunkDone, bReplied := make(chan struct{}), make(chan struct{})
	var onceChunk, onceW2 sync.Once
	proxyB := startFrameProxyFull(t, b.addr, func(f wire.Frame) {
		if f.Type == wire.FrameWrite && armed.Load() {
			switch f.Offset {
			case 0:
				chunkID.CompareAndSwap(0, f.ID)
			case w2off:
				w2ID.Store(f.ID)
			}
		}
	}, nil, func(f wire.Frame) {
		if id := chunkID.Load(); id != 0 && f.ID == id {
			onceChunk.Do(func() { close(chunkDone) })
		}
		if id := w2ID.Load(); id != 0 && f.ID == id {
			onceW2.Do(func() { close(bReplied) })
		}
	})
	cfg := engineConfig(t, "vol", size, 1)
	cfg.Replicas = []ReplicaConfig{{Addr: proxyA.ln.Addr().String()}, {Addr: proxyB.ln.Addr().String()}}
	cfg.Timeout = 10 * time.Second
	// After copying B's one missed chunk (1 MiB) the resync waits ~2 s
	// before it rejoins: the window in which W2 is sent to B.
	cfg.ResyncRate = 512 << 10
	ctx := context.Background()
	e, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e.Close()
	waitInSync(t, e, 2)
	old := bytes.Repeat([]byte{'o'}, 4096)
	must.NoError(t, e.WriteAt(ctx, old, w2off, true))

	// B falls behind by one chunk, then comes back and is resynced.
	proxyB.refuse.Store(true)
	proxyB.cut()
	must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{1}, resyncChunk), 0, false))
	must.Eq(t, 1, e.Status().InSync)
	armed.Store(true)
	proxyB.refuse.Store(false)
	<-chunkDone

	// A's disk is full: W2 fails there, while B (being resynced) applies it.
	full.Store(true)
	errW2 := make(chan error, 1)
	go func() { errW2 <- e.WriteAt(ctx, bytes.Repeat([]byte{'n'}, 4096), w2off, false) }()
	<-atA
	<-bReplied
	// B's resync ends (its connection breaks) before A's answer is known.
	proxyB.refuse.Store(true)
	proxyB.cut()
	deadline := time.Now().Add(10 * time.Second)
	for e.Status().Replicas[1].State == StateResyncing {
		must.True(t, time.Now().Before(deadline), must.Sprint("B's resync never ended"))
		time.Sleep(5 * time.Millisecond)
	}
	close(releaseA)
	must.Error(t, <-errW2)

	// The disk is freed and B comes back: it must end equal to A.
	full.Store(false)
	proxyB.refuse.Store(false)
	waitInSync(t, e, 2)
	must.NoError(t, e.Shutdown(ctx))
	da, db := replicaData(t, a), replicaData(t, b)
	must.Eq(t, old, da[w2off:w2off+4096])
	must.True(t, bytes.Equal(da, db), must.Sprintf("B differs from A at %d: %q", w2off, db[w2off:w2off+8]))
}

// The reconnect of an in-sync replica whose connection broke can race
// with a write that fails on it and drops it (with a bitmap of what it
// misses). The reconnect must then leave it alone, not take it for an
// in-sync replica come back without its history: that threw the bitmap
// away, later writes were recorded nowhere, and the next primary resynced
// it from the bitmap persisted before, without them.
func TestReconnectRacingADropKeepsTheBitmap(t *testing.T) {
	a, b := startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())
	var holdOpen atomic.Bool
	var once sync.Once
	atOpen, releaseOpen := make(chan struct{}), make(chan struct{})
	proxyB := startFrameProxy(t, b.addr, func(f wire.Frame) {
		if f.Type == wire.FrameOpen && holdOpen.Load() {
			once.Do(func() { close(atOpen) })
			<-releaseOpen
		}
	})
	const size = 16 << 20
	cfg := engineConfig(t, "vol", size, 1, a)
	cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: proxyB.ln.Addr().String()})
	ctx := context.Background()
	e, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e.Close()
	waitInSync(t, e, 2)

	// B's connection breaks with nothing in flight: the engine reconnects
	// it, and its OPEN is held.
	holdOpen.Store(true)
	proxyB.cut()
	<-atOpen
	// Meanwhile a write fails on B and drops it; its bitmap is persisted.
	must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0, false))
	must.Eq(t, 1, e.Status().InSync)
	must.NoError(t, e.persistBitmaps(ctx, true))
	// The reconnect goes on (B then stays away).
	proxyB.refuse.Store(true)
	close(releaseOpen)
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.stateMu.Lock()
		busy := e.peers[1].busy
		e.stateMu.Unlock()
		if !busy {
			break
		}
		must.True(t, time.Now().Before(deadline), must.Sprint("the reconnect never ended"))
		time.Sleep(5 * time.Millisecond)
	}
	// A write B misses, then a clean handover to the next primary.
	w := bytes.Repeat([]byte{2}, 4096)
	must.NoError(t, e.WriteAt(ctx, w, 8<<20, true))
	must.NoError(t, e.Shutdown(ctx))

	holdOpen.Store(false)
	proxyB.refuse.Store(false)
	e2 := nextPrimary(t, 2, a, size, a.addr, proxyB.ln.Addr().String())
	waitInSync(t, e2, 2)
	must.NoError(t, e2.Shutdown(ctx))
	da, db := replicaData(t, a), replicaData(t, b)
	must.Eq(t, w, da[8<<20:8<<20+4096])
	must.True(t, bytes.Equal(da, db), must.Sprintf("B differs from A: %q at 8 MiB", db[8<<20:8<<20+8]))
}

// A replica that rejoins becomes one a later primary asks what the others
// miss. The bitmaps it held before (stored by an earlier primary, or
// before it fell behind) no longer say that: rejoining must replace each
// with the engine's, and delete those of replicas whose history the
// engine does not know. Else a later primary resyncs such a replica from
// the stale bitmap and it rejoins without writes it missed (seed
// 140997034).
func TestRejoinedReplicaHoldsNoStaleBitmaps(t *testing.T) {
	a, b, c := startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())
	proxyB := startFrameProxy(t, b.addr, func(wire.Frame) {})
	proxyC := startFrameProxy(t, c.addr, func(wire.Frame) {})
	addrB, addrC := proxyB.ln.Addr().String(), proxyC.ln.Addr().String()
	const size = 16 << 20
	ctx := context.Background()
	cfg := engineConfig(t, "vol", size, 1, a)
	cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: addrB}, ReplicaConfig{Addr: addrC})
	e1, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	waitInSync(t, e1, 3)
	must.NoError(t, e1.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0, true))
	e1.stateMu.Lock()
	incC, genC := e1.peers[2].open.Incarnation, e1.peers[2].open.Membership.Gen
	e1.stateMu.Unlock()
	must.NoError(t, e1.Shutdown(ctx))
	// A bitmap for C an earlier primary left on B: C misses block 0 only.
	v, _, err := b.store.Open("vol", size, false)
	must.NoError(t, err)
	old := NewBitmap(size)
	old.SetRange(0, 4096)
	must.NoError(t, v.PutPeerBitmap(1, addrC, encodePeerBitmap(subject{inc: incC, gen: genC}, old)))

	// The next primary starts with A alone: it knows nothing of what B
	// and C miss. It writes W; B comes back and rejoins; C stays away.
	proxyB.refuse.Store(true)
	proxyC.refuse.Store(true)
	e2 := nextPrimary(t, 2, a, size, a.addr, addrB, addrC)
	const woff = 8 << 20
	w := bytes.Repeat([]byte{2}, 4096)
	must.NoError(t, e2.WriteAt(ctx, w, woff, true))
	proxyB.refuse.Store(false)
	waitInSync(t, e2, 2)
	must.NoError(t, e2.Shutdown(ctx)) // W's extent leaves the activity log

	// A is lost; the primary after that has B, and C comes back.
	a.stop()
	proxyC.refuse.Store(false)
	e3 := nextPrimary(t, 3, b, size, addrB, addrC)
	waitInSync(t, e3, 2)
	must.NoError(t, e3.Shutdown(ctx))
	must.Eq(t, w, replicaData(t, c)[woff:woff+4096])
}

// A change of the activity log that reached the replicas but failed to
// settle (a replica dropped on it while the in-sync record could not be
// written, and the writer gave up) must not leave the primary believing
// the extents it evicted are still hot: the replicas' log no longer names
// them, and a later write there, which a crash leaves on some replicas
// only, would fall outside what the next primary reconciles (simulator
// seeds 634034123 and 634035708: replicas different forever in a cold
// extent).
func TestFailedActivityUpdateLeavesNoExtentUncovered(t *testing.T) {
	a, b, c := startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())
	var armed atomic.Bool
	proxyC := startFrameProxyAfter(t, c.addr, func(wire.Frame) {}, func(f wire.Frame) bool {
		// C applies the new log, and its reply is lost with its connection.
		return armed.Load() && f.Type == wire.FrameActivity
	})
	hook := &recordingHook{}
	const size = 16 << 20
	cfg := engineConfig(t, "vol", size, 1, a, b)
	cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: proxyC.ln.Addr().String()})
	cfg.ActivityExtents, cfg.Hook = 2, hook
	ctx := context.Background()
	e, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e.Close()
	waitInSync(t, e, 3)
	block := bytes.Repeat([]byte{1}, 4096)
	must.NoError(t, e.WriteAt(ctx, block, 1*ExtentSize, false))
	must.NoError(t, e.WriteAt(ctx, block, 3*ExtentSize, false))

	// Extent 0 evicts extent 1 (the least recently used) on every
	// replica, C's reply is lost, and the drop cannot be recorded before
	// the writer gives up.
	hook.mu.Lock()
	hook.fail = errors.New("consul unreachable")
	hook.mu.Unlock()
	proxyC.refuse.Store(true)
	armed.Store(true)
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = e.WriteAt(wctx, block, 0, false)
	cancel()
	must.Error(t, err)
	hook.mu.Lock()
	hook.fail = nil
	hook.mu.Unlock()

	// A write to extent 1 must find it in every in-sync replica's log.
	must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), 1*ExtentSize, false))
	for _, r := range []*testReplica{a, b} {
		m, err := replica.ReadMetaOn(nil, r.store.Dir(), "vol")
		must.NoError(t, err)
		must.SliceContains(t, m.ActivityLog, uint64(1), must.Sprintf("%s's activity log %v misses the extent just written", r.addr, m.ActivityLog))
	}
}

// A replica that is behind keeps the bitmaps it held for others from when
// it was in sync; once a resync writes to it, they describe a volume it
// no longer holds. If a rolled-back in-sync record then makes it the copy
// (undetectable by design, see history.go), a replica resynced from one
// of them ends different from it (simulator seed 408810085): a resync
// target must hold no bitmap for others before its first copy.
func TestResyncTargetHoldsNoBitmapsForOthers(t *testing.T) {
	a, b, c := startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())
	const x3 = 8 << 20
	hit := make(chan struct{})
	var armed atomic.Bool
	proxyB := startFrameProxyAfter(t, b.addr, func(wire.Frame) {}, func(f wire.Frame) bool {
		// B's resync copies X3, and then B's connection is gone.
		if armed.Load() && f.Type == wire.FrameWrite && f.Offset == x3 {
			armed.Store(false)
			close(hit)
			return true
		}
		return false
	})
	proxyC := startFrameProxy(t, c.addr, func(wire.Frame) {})
	addrB, addrC := proxyB.ln.Addr().String(), proxyC.ln.Addr().String()
	const size = 16 << 20
	ctx := context.Background()
	cfg := engineConfig(t, "vol", size, 1, a)
	cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: addrB}, ReplicaConfig{Addr: addrC})
	e1, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e1.Close()
	waitInSync(t, e1, 3)
	must.NoError(t, e1.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0, true))

	// C falls behind by X2; A and B hold its bitmap.
	proxyC.refuse.Store(true)
	proxyC.cut()
	must.NoError(t, e1.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), 4<<20, true))
	must.NoError(t, e1.persistBitmaps(ctx, false))
	rolledBack := replicaMembership(t, b, "vol") // {A, B}

	// B falls behind by X3, comes back, and its resync copies X3 before
	// its connection breaks.
	proxyB.refuse.Store(true)
	proxyB.cut()
	x3data := bytes.Repeat([]byte{3}, 4096)
	must.NoError(t, e1.WriteAt(ctx, x3data, x3, true))
	armed.Store(true)
	proxyB.refuse.Store(false)
	select {
	case <-hit:
	case <-time.After(10 * time.Second):
		t.Fatal("B's resync never copied X3")
	}
	e1.Close()
	a.stop()

	// The record rolled back to {A, B} with A lost: B is the copy, C
	// comes back behind it. Stale, as the rollback makes it, but the two
	// must end identical.
	proxyC.refuse.Store(false)
	cfg2 := engineConfig(t, "vol", size, 2)
	cfg2.Replicas = []ReplicaConfig{{Addr: addrB}, {Addr: addrC}}
	cfg2.Recorded = &rolledBack
	e2, err := StartEngine(ctx, cfg2)
	must.NoError(t, err)
	defer e2.Close()
	waitInSync(t, e2, 2)
	must.NoError(t, e2.Shutdown(ctx))
	db, dc := replicaData(t, b), replicaData(t, c)
	must.Eq(t, x3data, db[x3:x3+4096]) // B's resync copied it
	must.True(t, bytes.Equal(db, dc), must.Sprintf("C differs from B at X3: %v", dc[x3:x3+4]))
}

// A bitmap one replica holds for another says what that one missed from
// the moment it fell behind. Once the other has been in sync again, under
// a primary the holder was away from, it may hold writes the holder never
// saw. Were the holder then the copy (the in-sync record rolled back to
// when it was current, which nothing can detect), a resync from that old
// bitmap would leave the blocks only the other holds: replicas different
// for good (simulator seed 678034, 1 replay in 64). A bitmap carries the
// generation its replica held when it was started, and a replica
// reporting another one is compared whole.
func TestBitmapOfReplicaInSyncSinceNotTrusted(t *testing.T) {
	const size = 16 << 20
	ctx := context.Background()
	r, e1 := startWithCBehind(t, size, 0)
	a, b, c, pa, pb, pc := r.a, r.b, r.c, r.pa, r.pb, r.pc
	addrA, addrB, addrC := r.addrs[0], r.addrs[1], r.addrs[2]
	must.NoError(t, e1.Shutdown(ctx))

	// The next primary, with B away: C is resynced from A's bitmap and
	// rejoins; W2 reaches A and C only.
	pb.refuse.Store(true)
	pc.refuse.Store(false)
	e2 := nextPrimary(t, 2, a, size, addrA, addrB, addrC)
	waitInSync(t, e2, 2)
	const w2off = 8 << 20
	must.NoError(t, e2.WriteAt(ctx, bytes.Repeat([]byte{3}, 4096), w2off, true))
	must.NoError(t, e2.Shutdown(ctx))

	// The record rolled back to B's generation while A and C are away: B
	// is the copy, with its bitmap for C from the first primary. C comes
	// back and must end as B.
	pa.refuse.Store(true)
	pc.refuse.Store(true)
	pb.refuse.Store(false)
	e3 := nextPrimary(t, 3, b, size, addrA, addrB, addrC)
	waitInSync(t, e3, 1)
	pc.refuse.Store(false)
	waitInSync(t, e3, 2)
	must.NoError(t, e3.Shutdown(ctx))
	dataB, dataC := replicaData(t, b), replicaData(t, c)
	must.Eq(t, dataB[w2off:w2off+4096], dataC[w2off:w2off+4096], must.Sprint("C kept a block B never had"))
	must.True(t, bytes.Equal(dataB, dataC), must.Sprint("replicas B and C differ"))
}

// threeProxied are three replicas, each behind a frame proxy the engine
// dials (addrs).
type threeProxied struct {
	a, b, c    *testReplica
	pa, pb, pc *frameProxy
	addrs      [3]string
}

// startWithCBehind starts the primary at epoch 1 over three replicas
// (resyncing at resyncRate, 0: unlimited), writes W0 at 0 on all three,
// then cuts C (its proxy refusing) and writes W1 at 4 MiB: A and B keep
// the bitmap of what C misses.
func startWithCBehind(t *testing.T, size int64, resyncRate int64) (*threeProxied, *Engine) {
	t.Helper()
	r := &threeProxied{a: startTestReplica(t, t.TempDir()), b: startTestReplica(t, t.TempDir()), c: startTestReplica(t, t.TempDir())}
	r.pa = startFrameProxy(t, r.a.addr, func(wire.Frame) {})
	r.pb = startFrameProxy(t, r.b.addr, func(wire.Frame) {})
	r.pc = startFrameProxy(t, r.c.addr, func(wire.Frame) {})
	ctx := context.Background()
	cfg := engineConfig(t, "vol", size, 1)
	for i, p := range []*frameProxy{r.pa, r.pb, r.pc} {
		r.addrs[i] = p.ln.Addr().String()
		cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: r.addrs[i]})
	}
	cfg.ResyncRate = resyncRate
	e1, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	t.Cleanup(e1.Close)
	waitInSync(t, e1, 3)
	must.NoError(t, e1.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0, true))
	r.pc.refuse.Store(true)
	r.pc.cut()
	must.NoError(t, e1.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), 4<<20, true))
	must.Eq(t, 2, e1.Status().InSync)
	return r, e1
}

// A replica resyncing from a bitmap receives the primary's writes; once a
// holder of that bitmap leaves the in-sync set, the replica may receive
// writes the holder never gets, while its own generation (it is not a
// member) stays as it was. If the record then rolls back to the holder,
// the holder's bitmap must not be trusted for it: it would leave the
// replica with blocks the copy never had (simulator seed 678034, the
// variant left after TestBitmapOfReplicaInSyncSinceNotTrusted). The write
// comes before the resync restarts under the new in-sync set (the abort
// keeps it from the replica) or after (the new mark makes the holder's
// bitmap not match).
func TestBitmapNotTrustedAfterHolderLeftDuringResync(t *testing.T) {
	for _, restarted := range []bool{false, true} {
		t.Run(fmt.Sprintf("restarted=%v", restarted), func(t *testing.T) {
			testBitmapNotTrustedAfterHolderLeft(t, restarted)
		})
	}
}

func testBitmapNotTrustedAfterHolderLeft(t *testing.T, restarted bool) {
	const size = 16 << 20
	ctx := context.Background()
	// So slow that the resync never copies its first chunk: C stays a
	// resync target, receiving every write, for the whole test.
	r, e1 := startWithCBehind(t, size, 1)
	a, c, pa, pb, pc := r.a, r.c, r.pa, r.pb, r.pc
	addrA, addrB, addrC := r.addrs[0], r.addrs[1], r.addrs[2]

	// C comes back and resyncs; A and B store its bitmap again.
	pc.refuse.Store(false)
	waitReplicaState(t, e1, addrC, StateResyncing)
	must.NoError(t, e1.persistBitmaps(ctx, true))

	// A leaves; W2, in an extent no activity log of A's names, reaches B
	// and whatever C is sent.
	pa.refuse.Store(true)
	pa.cut()
	if restarted {
		must.NoError(t, e1.WriteAt(ctx, bytes.Repeat([]byte{4}, 4096), 4096, true))
		must.Eq(t, 1, e1.Status().InSync)
		waitReplicaState(t, e1, addrC, StateResyncing)
	}
	const w2off = 8 << 20
	must.NoError(t, e1.WriteAt(ctx, bytes.Repeat([]byte{3}, 4096), w2off, true))
	must.Eq(t, 1, e1.Status().InSync)
	e1.Close()

	// The record rolled back to A's generation while B is away: A is the
	// copy, with its bitmap for C. C must end as A.
	pb.refuse.Store(true)
	pa.refuse.Store(false)
	e2 := nextPrimary(t, 2, a, size, addrA, addrB, addrC)
	waitInSync(t, e2, 2)
	must.NoError(t, e2.Shutdown(ctx))
	dataA, dataC := replicaData(t, a), replicaData(t, c)
	must.Eq(t, dataA[w2off:w2off+4096], dataC[w2off:w2off+4096], must.Sprint("C kept a block A never had"))
	must.True(t, bytes.Equal(dataA, dataC), must.Sprint("replicas A and C differ"))
}

// A full (or checksum) resync keeps going when an in-sync replica leaves:
// no member holds a bitmap of its target, so there is nothing to mark it
// against, and restarting would throw away its progress (hours, on a
// large volume). A resync from a bitmap is aborted instead (see
// TestBitmapNotTrustedAfterHolderLeftDuringResync).
func TestFullResyncGoesOnWhenAMemberLeaves(t *testing.T) {
	const size = 16 << 20
	ctx := context.Background()
	r, e1 := startWithCBehind(t, size, 1) // never copies its first chunk
	// C's disk is replaced while it is away: it comes back empty.
	r.c.stop()
	startTestReplicaAt(t, t.TempDir(), r.c.addr)
	r.pc.refuse.Store(false)
	waitReplicaState(t, e1, r.addrs[2], StateResyncing)
	st := e1.Status()
	must.Eq(t, string(ResyncFull), st.Replicas[2].Resync.Mode)

	r.pa.refuse.Store(true)
	r.pa.cut()
	must.NoError(t, e1.WriteAt(ctx, bytes.Repeat([]byte{3}, 4096), 8<<20, true))
	st = e1.Status()
	must.Eq(t, 1, st.InSync)
	must.Eq(t, StateResyncing, st.Replicas[2].State, must.Sprintf("the full resync was stopped: %+v", st.Replicas[2]))
}
