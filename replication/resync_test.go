package replication

import (
	"bytes"
	"context"
	"crypto/rand"
	mrand "math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// writeLoad runs random writes of 4-64 KiB until stop is closed and
// returns the bytes written.
func writeLoad(t *testing.T, e *Engine, size int64, seed uint64, stop <-chan struct{}) *atomic.Int64 {
	var written atomic.Int64
	var wg sync.WaitGroup
	for g := uint64(0); g < 4; g++ {
		wg.Go(func() {
			r := mrand.New(mrand.NewPCG(seed, g))
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := int64(4096 * (1 + r.IntN(16)))
				off := int64(r.IntN(int(size/4096)-16)) * 4096
				p := make([]byte, n)
				rand.Read(p)
				if err := e.WriteAt(context.Background(), p, off, false); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				written.Add(n)
			}
		})
	}
	t.Cleanup(wg.Wait)
	return &written
}

func TestResyncReturningReplicaUnderLoad(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	rs := []*testReplica{startTestReplica(t, dirs[0]), startTestReplica(t, dirs[1]), startTestReplica(t, dirs[2])}
	hook := &recordingHook{}
	const size = 64 << 20
	e := startTestEngine(t, "vol", size, 1, hook, rs...)
	ctx := context.Background()
	p := make([]byte, size)
	rand.Read(p)
	must.NoError(t, e.WriteAt(ctx, p, 0, false))

	rs[2].stop()
	stop := make(chan struct{})
	written := writeLoad(t, e, size, 1, stop)
	for e.Status().InSync != 2 || written.Load() < 8<<20 {
		time.Sleep(time.Millisecond)
	}
	// Back on its old address, while writes keep flowing.
	rs[2] = startTestReplicaAt(t, dirs[2], rs[2].addr)
	st := waitInSync(t, e, 3)
	close(stop)
	must.Eq(t, "bitmap", st.Replicas[2].Resync.Mode)
	must.Eq(t, []string{rs[0].addr, rs[1].addr, rs[2].addr}, hook.last())
	must.NoError(t, e.Flush(ctx))
	must.NoError(t, e.Shutdown(ctx))
	sum := fileSum(t, rs[0].store.DataPath("vol"))
	for _, r := range rs[1:] {
		must.Eq(t, sum, fileSum(t, r.store.DataPath("vol")))
	}
}

func TestChecksumResyncRepairsAlteredReplica(t *testing.T) {
	rs := []*testReplica{startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())}
	const size = 64 << 20
	e := startTestEngine(t, "vol", size, 1, nil, rs...)
	ctx := context.Background()
	p := make([]byte, size)
	rand.Read(p)
	must.NoError(t, e.WriteAt(ctx, p, 0, false))
	must.NoError(t, e.Shutdown(ctx))

	// Flip bytes in three extents of the third replica behind the engine's back.
	altered := []int64{1, 5, 13}
	f, err := os.OpenFile(rs[2].store.DataPath("vol"), os.O_RDWR, 0)
	must.NoError(t, err)
	for _, x := range altered {
		_, err := f.WriteAt([]byte{0xde, 0xad, 0xbe, 0xef}, x*ExtentSize+12345)
		must.NoError(t, err)
	}
	must.NoError(t, f.Close())

	// A new primary that does not know the third replica's history.
	gen := replicaMembership(t, rs[0], "vol").Gen
	cfg := EngineConfig{Volume: "vol", Size: size, Epoch: 2, Log: testLogger(t), ReconnectInterval: 50 * time.Millisecond,
		Recorded: &wire.Membership{Gen: gen, Replicas: []string{rs[0].addr, rs[1].addr}}}
	for _, r := range rs {
		cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: r.addr})
	}
	e2, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e2.Close()
	st := waitInSync(t, e2, 3)
	rsync := st.Replicas[2].Resync
	must.Eq(t, "checksum", rsync.Mode)
	must.Eq(t, int64(len(altered)), rsync.RepairedExtents)
	must.Eq(t, int64(len(altered))*BlockSize, rsync.SentBytes)
	must.NoError(t, e2.Shutdown(ctx))
	must.Eq(t, fileSum(t, rs[0].store.DataPath("vol")), fileSum(t, rs[2].store.DataPath("vol")))
}

func TestFullResyncKeepsHolesSparse(t *testing.T) {
	a := startTestReplica(t, t.TempDir())
	const size = 256 << 20
	e := startTestEngine(t, "vol", size, 1, nil, a)
	ctx := context.Background()
	must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{7}, 1<<20), 100<<20, false))
	must.NoError(t, e.Shutdown(ctx))

	b := startTestReplica(t, t.TempDir())
	e2 := startTestEngine(t, "vol", size, 2, nil, a, b)
	st := waitInSync(t, e2, 2)
	must.Eq(t, "full", st.Replicas[1].Resync.Mode)
	must.Eq(t, int64(1<<20), st.Replicas[1].Resync.SentBytes)
	must.NoError(t, e2.Shutdown(ctx))
	must.Eq(t, fileSum(t, a.store.DataPath("vol")), fileSum(t, b.store.DataPath("vol")))
	var sa, sb unixStat
	must.NoError(t, statBlocks(a.store.DataPath("vol"), &sa))
	must.NoError(t, statBlocks(b.store.DataPath("vol"), &sb))
	must.LessEq(t, sa.blocks+64, sb.blocks, must.Sprint("target must stay sparse"))
}

func TestMinInSyncHoldsWrites(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	rs := []*testReplica{startTestReplica(t, dirs[0]), startTestReplica(t, dirs[1]), startTestReplica(t, dirs[2])}
	cfg := EngineConfig{Volume: "vol", Size: 16 << 20, Epoch: 1, MinInSync: 2, Log: testLogger(t), ReconnectInterval: 50 * time.Millisecond}
	for _, r := range rs {
		cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: r.addr})
	}
	ctx := context.Background()
	e, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e.Close()
	must.NoError(t, e.WriteAt(ctx, []byte("before"), 0, false))

	rs[1].stop()
	rs[2].stop()
	done := make(chan error, 1)
	go func() { done <- e.WriteAt(ctx, []byte("during"), 4096, false) }()
	select {
	case err := <-done:
		t.Fatalf("write completed with one replica in sync and min_in_sync=2: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	rs[1] = startTestReplicaAt(t, dirs[1], rs[1].addr)
	must.NoError(t, <-done)
	buf := make([]byte, 6)
	must.NoError(t, e.ReadAt(ctx, buf, 0))
	must.Eq(t, "before", string(buf))
	must.NoError(t, e.ReadAt(ctx, buf, 4096))
	must.Eq(t, "during", string(buf))
	must.NoError(t, e.Shutdown(ctx))
	must.Eq(t, fileSum(t, rs[0].store.DataPath("vol")), fileSum(t, rs[1].store.DataPath("vol")))
}

func TestBitmapSurvivesPrimaryRestart(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir()}
	rs := []*testReplica{startTestReplica(t, dirs[0]), startTestReplica(t, dirs[1])}
	const size = 64 << 20
	e := startTestEngine(t, "vol", size, 1, nil, rs...)
	ctx := context.Background()
	rs[1].stop()
	written := int64(0)
	for i := int64(0); i < 64; i++ {
		must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, 8192), i*(size/64), false))
		written += 8192
	}
	must.NoError(t, e.Shutdown(ctx)) // persists the bitmap on the survivor

	rs[1] = startTestReplicaAt(t, dirs[1], rs[1].addr)
	cfg := EngineConfig{Volume: "vol", Size: size, Epoch: 2, Log: testLogger(t), ReconnectInterval: 50 * time.Millisecond,
		Replicas: []ReplicaConfig{{Addr: rs[0].addr}, {Addr: rs[1].addr}}}
	e2, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e2.Close()
	st := waitInSync(t, e2, 2)
	must.Eq(t, "bitmap", st.Replicas[1].Resync.Mode)
	must.Eq(t, written, st.Replicas[1].Resync.SentBytes)
	must.NoError(t, e2.Shutdown(ctx))
	must.Eq(t, fileSum(t, rs[0].store.DataPath("vol")), fileSum(t, rs[1].store.DataPath("vol")))
}

func TestAddAndRetireReplica(t *testing.T) {
	a, b := startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())
	hook := &recordingHook{}
	const size = 32 << 20
	e := startTestEngine(t, "vol", size, 1, hook, a, b)
	ctx := context.Background()
	p := make([]byte, 8<<20)
	rand.Read(p)
	must.NoError(t, e.WriteAt(ctx, p, 4<<20, false))

	// b's node is lost: c replaces it.
	b.stop()
	must.NoError(t, e.WriteAt(ctx, p[:4096], 0, false))
	c := startTestReplica(t, t.TempDir())
	e.AddReplica(ReplicaConfig{Addr: c.addr})
	e.AddReplica(ReplicaConfig{Addr: c.addr}) // idempotent
	waitInSync(t, e, 2)
	must.NoError(t, e.RetireReplica(ctx, b.addr))
	must.NoError(t, e.RetireReplica(ctx, b.addr)) // idempotent
	must.Eq(t, []string{a.addr, c.addr}, hook.last())
	st := e.Status()
	must.Len(t, 2, st.Replicas)
	must.Eq(t, "full", st.Replicas[1].Resync.Mode)
	must.ErrorIs(t, e.RetireReplica(ctx, a.addr), nil)
	must.Len(t, 1, e.Status().Replicas)
	must.ErrorIs(t, e.RetireReplica(ctx, c.addr), ErrInvalid) // the last in-sync replica
	must.NoError(t, e.Shutdown(ctx))
	must.Eq(t, fileSum(t, a.store.DataPath("vol")), fileSum(t, c.store.DataPath("vol")))
}
