package replication

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/internal/faultproxy"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// recordingHook records every in-sync set, and can be made to fail.
type recordingHook struct {
	mu   sync.Mutex
	sets [][]string
	fail error
}

func (h *recordingHook) SetInSync(_ context.Context, _, _ uint64, set []string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fail != nil {
		return h.fail
	}
	h.sets = append(h.sets, slices.Clone(set))
	return nil
}

func (h *recordingHook) first() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sets[0]
}

func (h *recordingHook) last() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sets[len(h.sets)-1]
}

func fileSum(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	must.NoError(t, err)
	return sha256.Sum256(b)
}

func TestEngineReplicatesToEveryReplica(t *testing.T) {
	rs := []*testReplica{startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())}
	hook := &recordingHook{}
	const size = 4 << 20
	e := startTestEngine(t, "vol", size, 1, hook, rs...)
	must.Eq(t, []string{rs[0].addr, rs[1].addr, rs[2].addr}, hook.last())

	ctx := context.Background()
	want := make([]byte, size)
	// Concurrent, overlapping writes: replicas must still end identical.
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Go(func() {
			r := mrand.New(mrand.NewPCG(uint64(g), 1))
			for i := 0; i < 200; i++ {
				off := int64(r.IntN(size/512-16)) * 512
				p := make([]byte, 512*(1+r.IntN(16)))
				rand.Read(p)
				must.NoError(t, e.WriteAt(ctx, p, off, r.IntN(10) == 0))
			}
		})
	}
	wg.Wait()
	must.NoError(t, e.Trim(ctx, 1<<20, 64<<10))
	must.NoError(t, e.Flush(ctx))
	must.NoError(t, e.ReadAt(ctx, want, 0))
	must.Eq(t, make([]byte, 64<<10), want[1<<20:1<<20+64<<10])
	e.Close()

	sum := sha256.Sum256(want)
	for _, r := range rs {
		must.Eq(t, sum, fileSum(t, r.store.DataPath("vol")), must.Sprint("replica", r.addr))
	}
}

func TestEngineOutOfRange(t *testing.T) {
	r := startTestReplica(t, t.TempDir())
	e := startTestEngine(t, "vol", 8192, 1, nil, r)
	ctx := context.Background()
	must.ErrorIs(t, e.WriteAt(ctx, make([]byte, 2), 8191, false), ErrOutOfRange)
	must.ErrorIs(t, e.ReadAt(ctx, make([]byte, 2), -1), ErrOutOfRange)
	must.ErrorIs(t, e.Trim(ctx, 4096, 8192), ErrOutOfRange)
	must.Eq(t, int64(0), r.server.Stats.Applied.Load())
}

func TestEngineFencedByNewerEpoch(t *testing.T) {
	rs := []*testReplica{startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())}
	ctx := context.Background()
	old := startTestEngine(t, "vol", 1<<20, 5, nil, rs...)
	must.NoError(t, old.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0, false))

	// The newer primary contacts the replicas: they promise epoch 6.
	newer := startTestEngine(t, "vol", 1<<20, 6, nil, rs...)
	appliedBefore := rs[0].server.Stats.Applied.Load() + rs[1].server.Stats.Applied.Load()

	accepted := 0
	for i := 0; i < 50; i++ {
		if err := old.WriteAt(ctx, bytes.Repeat([]byte{0xEE}, 4096), int64(i)*4096, false); err == nil {
			accepted++
		} else {
			must.ErrorIs(t, err, ErrFenced)
		}
	}
	must.Eq(t, 0, accepted)
	must.True(t, old.Fenced())
	must.True(t, old.Status().Fenced)
	must.ErrorIs(t, old.Flush(ctx), ErrFenced)
	must.ErrorIs(t, old.ReadAt(ctx, make([]byte, 10), 0), ErrFenced)
	must.Eq(t, appliedBefore, rs[0].server.Stats.Applied.Load()+rs[1].server.Stats.Applied.Load())

	// The newer primary sees the old data and none of the fenced writes.
	buf := make([]byte, 8192)
	must.NoError(t, newer.ReadAt(ctx, buf, 0))
	must.Eq(t, bytes.Repeat([]byte{1}, 4096), buf[:4096])
	must.Eq(t, make([]byte, 4096), buf[4096:])

	// Starting an engine at an epoch below the promised one fails at once.
	_, err := StartEngine(ctx, EngineConfig{Volume: "vol", Size: 1 << 20, Epoch: 5,
		Replicas: []ReplicaConfig{{Addr: rs[0].addr}}, Log: testLogger(t)})
	must.ErrorIs(t, err, ErrFenced)
}

func TestEngineDropsFailedReplicaAndRecordsFirst(t *testing.T) {
	rs := []*testReplica{startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())}
	hook := &recordingHook{}
	e := startTestEngine(t, "vol", 1<<20, 1, hook, rs...)
	ctx := context.Background()
	must.NoError(t, e.WriteAt(ctx, []byte("before"), 0, false))

	rs[1].stop()
	// The first write after the failure completes only once the hook has
	// recorded the smaller set.
	must.NoError(t, e.WriteAt(ctx, []byte("after"), 4096, false))
	must.Eq(t, []string{rs[0].addr, rs[2].addr}, hook.last())
	st := e.Status()
	must.Eq(t, 2, st.InSync)
	must.Eq(t, StateDropped, st.Replicas[1].State)
	must.StrContains(t, st.Replicas[1].Reason, rs[1].addr)

	// Reads skip the dropped replica.
	buf := make([]byte, 5)
	for i := 0; i < 4; i++ {
		must.NoError(t, e.ReadAt(ctx, buf, 4096))
		must.Eq(t, "after", string(buf))
	}
}

// TestEngineHoldsWritesUntilHookRecords (issue #10, scenario 9): a replica
// is dropped while the in-sync record cannot be written (a Consul blip).
// The write that depends on the record is held, not failed with an error
// (which would make ext4 remount read-only), and completes once the
// record is written; no write completes while the drop is unrecorded.
func TestEngineHoldsWritesUntilHookRecords(t *testing.T) {
	rs := []*testReplica{startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())}
	hook := &recordingHook{}
	e := startTestEngine(t, "vol", 1<<20, 1, hook, rs...)
	ctx := context.Background()

	hook.mu.Lock()
	hook.fail = errors.New("consul unreachable")
	hook.mu.Unlock()
	rs[0].stop()
	done := make(chan error, 2)
	go func() { done <- e.WriteAt(ctx, []byte("x"), 0, false) }()
	go func() { done <- e.WriteAt(ctx, []byte("y"), 8192, false) }()
	select {
	case err := <-done:
		t.Fatalf("a write completed while the drop was unrecorded: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	must.True(t, e.holding.Load() > 0)

	hook.mu.Lock()
	hook.fail = nil
	hook.mu.Unlock()
	must.NoError(t, <-done)
	must.NoError(t, <-done)
	must.Eq(t, []string{rs[1].addr}, hook.last())
}

// TestEngineLastReplicaNeverDropped (issue #10, scenario 4): the last
// in-sync replica failing (a timeout, a restart) does not record an empty
// in-sync set; writes wait for it and complete once it is back.
func TestEngineLastReplicaNeverDropped(t *testing.T) {
	dir := t.TempDir()
	r := startTestReplica(t, dir)
	hook := &recordingHook{}
	e := startTestEngine(t, "vol", 1<<20, 1, hook, r)
	ctx := context.Background()
	must.NoError(t, e.WriteAt(ctx, []byte("before"), 0, true))
	r.stop()

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	must.ErrorIs(t, e.WriteAt(short, []byte("x"), 4096, false), context.DeadlineExceeded)
	for _, set := range hook.sets {
		must.SliceNotEmpty(t, set)
	}
	done := make(chan error, 1)
	go func() { done <- e.WriteAt(ctx, []byte("after"), 4096, false) }()
	time.Sleep(200 * time.Millisecond)
	r = startTestReplicaAt(t, dir, r.addr)
	must.NoError(t, <-done)
	buf := make([]byte, 6)
	must.NoError(t, e.ReadAt(ctx, buf, 0))
	must.Eq(t, "before", string(buf))
	must.Eq(t, 1, e.Status().InSync)
	for _, set := range hook.sets {
		must.SliceNotEmpty(t, set)
	}

	// Every replica failing the same request with an error (a full disk
	// everywhere) fails the request but keeps the replica in sync.
	e2 := startTestEngine(t, "vol2", 1<<20, 1, hook, r)
	must.NoError(t, e2.WriteAt(ctx, []byte("kept"), 0, true))
	must.Eq(t, 1, e2.Status().InSync)
	must.SliceNotEmpty(t, hook.last())
}

func TestEngineNewEmptyReplicaIsOutOfSync(t *testing.T) {
	a, b := startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())
	e := startTestEngine(t, "vol", 1<<20, 1, nil, a)
	must.NoError(t, e.WriteAt(context.Background(), []byte("data"), 0, true))
	e.Close()

	hook := &recordingHook{}
	e2 := startTestEngine(t, "vol", 1<<20, 2, hook, a, b)
	must.Eq(t, []string{a.addr}, hook.first())
	// It is brought back by a full copy, then recorded in sync.
	st := waitInSync(t, e2, 2)
	must.Eq(t, "full", st.Replicas[1].Resync.Mode)
	must.Eq(t, []string{a.addr, b.addr}, hook.last())
	must.Eq(t, fileSum(t, a.store.DataPath("vol")), fileSum(t, b.store.DataPath("vol")))

	// A record of a newer generation than every reachable replica holds
	// wins: they are stale, nothing is served.
	e2.Close()
	gen := replicaMembership(t, b, "vol").Gen
	_, err := StartEngine(context.Background(), EngineConfig{Volume: "vol", Size: 1 << 20, Epoch: 3,
		Replicas: []ReplicaConfig{{Addr: b.addr}}, Recorded: &wire.Membership{Gen: gen + 1, Replicas: []string{a.addr}}, Log: testLogger(t)})
	must.ErrorIs(t, err, ErrNoReplicas)
}

func TestServerSurvivesGarbage(t *testing.T) {
	r := startTestReplica(t, t.TempDir())
	e := startTestEngine(t, "vol", 1<<20, 1, nil, r)
	ctx := context.Background()
	p := make([]byte, 1<<20)
	rand.Read(p)
	must.NoError(t, e.WriteAt(ctx, p, 0, true))
	before := fileSum(t, r.store.DataPath("vol"))

	open := wire.AppendFrame(nil, &wire.Frame{Type: wire.FrameOpen, ID: 1, Payload: []byte(`{"volume":"vol","size":1048576}`)})
	badWrite := wire.AppendFrame(nil, &wire.Frame{Type: wire.FrameWrite, Epoch: 1, ID: 2, Payload: bytes.Repeat([]byte{0xFF}, 4096)})
	badWrite[len(badWrite)-1] ^= 1 // checksum no longer matches
	oversize := wire.AppendFrame(nil, &wire.Frame{Type: wire.FrameWrite, Epoch: 1, ID: 2})
	binary.BigEndian.PutUint32(oversize[44:], 1<<31)
	binary.BigEndian.PutUint32(oversize[52:], crc32.Checksum(oversize[:52], crc32.MakeTable(crc32.Castagnoli)))
	garbage := make([]byte, 64<<10)
	rand.Read(garbage)
	inputs := map[string][]byte{
		"garbage":          garbage,
		"truncated frame":  badWrite[:100],
		"bad checksum":     append(slices.Clone(open), badWrite...),
		"oversize length":  append(slices.Clone(open), oversize...),
		"reply as request": wire.AppendFrame(nil, &wire.Frame{Type: wire.FrameWrite | wire.ReplyBit, ID: 9}),
		"write before open": wire.AppendFrame(nil, &wire.Frame{Type: wire.FrameWrite, Epoch: 1, ID: 2,
			Payload: bytes.Repeat([]byte{0xFF}, 4096)}),
	}
	for name, in := range inputs {
		t.Run(name, func(t *testing.T) {
			c, err := (&netDialer).DialContext(ctx, "tcp", r.addr)
			must.NoError(t, err)
			defer c.Close()
			_, _ = c.Write(in)
			if cw, ok := c.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			_, _ = readAll(c) // the server closes the connection
			// The engine's connection is unaffected.
			must.NoError(t, e.WriteAt(ctx, p[:4096], 0, false))
		})
	}
	must.NoError(t, e.Flush(ctx))
	must.Eq(t, before, fileSum(t, r.store.DataPath("vol")))
	must.Greater(t, int64(4), r.server.Stats.BadFrames.Load())
	must.Eq(t, 1, e.Status().InSync)
}

func TestEngineStartValidation(t *testing.T) {
	ctx := context.Background()
	for name, cfg := range map[string]EngineConfig{
		"no replicas": {Volume: "v", Size: 4096, Epoch: 1},
		"bad size":    {Volume: "v", Size: 1000, Epoch: 1, Replicas: []ReplicaConfig{{Addr: "127.0.0.1:1"}}},
		"bad name":    {Volume: "../x", Size: 4096, Epoch: 1, Replicas: []ReplicaConfig{{Addr: "127.0.0.1:1"}}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := StartEngine(ctx, cfg)
			must.ErrorIs(t, err, ErrInvalid)
		})
	}
	_, err := StartEngine(ctx, EngineConfig{Volume: "v", Size: 4096, Epoch: 1, Replicas: []ReplicaConfig{{Addr: "127.0.0.1:1"}}})
	must.ErrorIs(t, err, ErrNoReplicas)
	must.StrContains(t, err.Error(), fmt.Sprint("127.0.0.1:1"))
}

func TestEngineHoldAndFence(t *testing.T) {
	r := startTestReplica(t, t.TempDir())
	e := startTestEngine(t, "vol", 1<<20, 1, nil, r)
	ctx := context.Background()

	e.Hold()
	must.True(t, e.Status().Held)
	done := make(chan error, 1)
	go func() { done <- e.WriteAt(ctx, []byte("held"), 0, false) }()
	select {
	case err := <-done:
		t.Fatalf("held write completed: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	e.Release()
	must.NoError(t, <-done)

	e.Hold()
	go func() { done <- e.WriteAt(ctx, []byte("held"), 0, false) }()
	e.Fence(errors.New("lease lost"))
	must.ErrorIs(t, <-done, ErrFenced)
	must.ErrorIs(t, e.Flush(ctx), ErrFenced)
}

func TestEngineSplitsLargeRequests(t *testing.T) {
	rs := []*testReplica{startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())}
	const size = 3 * wire.MaxIOSize
	e := startTestEngine(t, "vol", size, 1, nil, rs...)
	ctx := context.Background()
	p := make([]byte, size-4096)
	rand.Read(p)
	must.NoError(t, e.WriteAt(ctx, p, 4096, true))
	q := make([]byte, len(p))
	must.NoError(t, e.ReadAt(ctx, q, 4096))
	must.Eq(t, sha256.Sum256(p), sha256.Sum256(q))
	must.Eq(t, 2, e.Status().InSync)
}

// The last in-sync replica going away while a replica behind has bits
// to persist: the persister's broadcast waits for the reconnect, and the
// reconnect must still happen (they once shared a goroutine, and the
// volume stayed held after the replica came back).
func TestPersistWaitDoesNotStopReconnect(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	a, b := startTestReplica(t, dirA), startTestReplica(t, dirB)
	e := startTestEngine(t, "vol", 1<<20, 1, nil, a, b)
	ctx := context.Background()
	b.stop()
	must.NoError(t, e.WriteAt(ctx, []byte("dirty for b"), 0, false)) // b dropped, its bitmap has bits
	must.Eq(t, 1, e.Status().InSync)
	a.stop()
	time.Sleep(1500 * time.Millisecond) // a persist tick finds a unreachable and waits
	a = startTestReplicaAt(t, dirA, a.addr)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	must.NoError(t, e.WriteAt(wctx, []byte("after"), 8192, false), must.Sprint("the held write never resumed"))
	buf := make([]byte, 11)
	must.NoError(t, e.ReadAt(ctx, buf, 0))
	must.Eq(t, "dirty for b", string(buf))
}

// Every in-sync replica's connection breaks at once, and the first to
// come back was wiped: the engine must not have settled on it as the
// volume's copy. It waits for another, which holds every acknowledged
// write, and resyncs the wiped one from it.
func TestAllConnectionsBrokenKeepsEveryCandidate(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	a, b := startTestReplica(t, dirA), startTestReplica(t, dirB)
	e := startTestEngine(t, "vol", 1<<20, 1, nil, a, b)
	ctx := context.Background()
	must.NoError(t, e.WriteAt(ctx, []byte("acknowledged"), 0, true))
	a.stop()
	b.stop()
	done := make(chan error, 1)
	go func() { done <- e.WriteAt(ctx, []byte("held"), 8192, false) }()
	time.Sleep(300 * time.Millisecond) // failed on both, held
	must.NoError(t, os.RemoveAll(filepath.Join(dirA, "vol")))
	a = startTestReplicaAt(t, dirA, a.addr) // back first, empty
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("the write completed on the wiped replica alone: %v", err)
	default:
	}
	b = startTestReplicaAt(t, dirB, b.addr)
	select {
	case err := <-done:
		must.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("the held write never completed after the intact replica came back")
	}
	must.Eq(t, "acknowledged", string(readBack(t, e, 0, 12)))
	waitInSync(t, e, 2)
	must.Eq(t, fileSum(t, a.store.DataPath("vol")), fileSum(t, b.store.DataPath("vol")))
}

// startTestProxy puts a fault proxy (the simulator's, which found seed
// 851711047) in front of the replica at target, until the test ends.
func startTestProxy(t testing.TB, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.Listen(0)
	must.NoError(t, err)
	p.SetTarget(target)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Serve(ctx)
	}()
	t.Cleanup(func() {
		stop()
		<-done
	})
	return p
}

// A write is held at in-sync replica A (its frames held) after B applied
// it; B is then wiped with nothing in flight, so its connection broke
// without a request failing on it and it stays in sync while the engine
// redials it ("no replica of that volume here"). Then A's connection
// breaks too. A holds every acknowledged write; B holds nothing. The
// engine must not drop A and bet the volume on B (it held I/O for good:
// simulator seed 851711047): it keeps both, and A, back first with its
// history, is the copy.
func TestBrokenConnectionNotDroppedForAnAwayReplica(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	a, b := startTestReplica(t, dirA), startTestReplica(t, dirB)
	pa := startTestProxy(t, a.addr)
	cfg := EngineConfig{Volume: "vol", Size: 1 << 20, Epoch: 1, Log: testLogger(t), Timeout: 10 * time.Second,
		ReconnectInterval: 20 * time.Millisecond,
		Replicas:          []ReplicaConfig{{Addr: pa.Addr()}, {Addr: b.addr}}}
	e, err := StartEngine(context.Background(), cfg)
	must.NoError(t, err)
	t.Cleanup(e.Close)
	ctx := context.Background()
	must.NoError(t, e.WriteAt(ctx, []byte("acknowledged"), 0, true))

	pa.SetHold(true)
	done := make(chan error, 1)
	go func() { done <- e.WriteAt(ctx, []byte("held"), 8192, false) }()
	// B applies it; A's copy is held in the proxy.
	deadline := time.Now().Add(10 * time.Second)
	for {
		buf := make([]byte, 4)
		f, err := os.Open(b.store.DataPath("vol"))
		must.NoError(t, err)
		_, _ = f.ReadAt(buf, 8192)
		f.Close()
		if string(buf) == "held" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the write never reached B")
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.stop()
	must.NoError(t, os.RemoveAll(filepath.Join(dirB, "vol")))
	b = startTestReplicaAt(t, dirB, b.addr) // up, without the volume
	time.Sleep(200 * time.Millisecond)      // redialled: "no replica of that volume here"
	for _, r := range e.Status().Replicas {
		must.Eq(t, StateInSync, r.State, must.Sprintf("replica %s left the in-sync set early: %+v", r.Addr, r))
	}
	select {
	case err := <-done:
		t.Fatalf("the write completed while held at A: %v", err)
	default:
	}

	pa.SetCut(true)   // A's connection breaks: the write fails there
	pa.SetHold(false) // what A's connection held is lost with it
	time.Sleep(200 * time.Millisecond)
	pa.SetCut(false) // A is reachable again, with everything it held
	select {
	case err := <-done:
		must.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("I/O stayed held for B, which is gone, although A came back with every acknowledged write")
	}
	must.Eq(t, "acknowledged", string(readBack(t, e, 0, 12)))
	must.Eq(t, "held", string(readBack(t, e, 8192, 4)))
	waitInSync(t, e, 2) // B fully copied from A
	must.Eq(t, fileSum(t, a.store.DataPath("vol")), fileSum(t, b.store.DataPath("vol")))
}
