package replication

// The scenarios of issue #10, each forced deterministically: a replica's
// files rolled back to their state at its last fsync stand in for a power
// loss, and a frame-aware proxy holds a chosen frame. This file holds the
// power-loss scenarios and the helpers of all of them; which replicas a
// new primary trusts is durability_history_test.go, bitmaps around a
// resync durability_bitmap_test.go.

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/replication/replica"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// snapshotReplica copies a stopped replica's files (data and metadata):
// what its disk holds durably.
func snapshotReplica(t *testing.T, dir, volume string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, name := range []string{"data", "meta"} {
		b, err := os.ReadFile(filepath.Join(dir, volume, name))
		must.NoError(t, err)
		out[name] = b
	}
	return out
}

// powerLoss rolls a stopped replica's files back to a snapshot and marks
// it as not shut down cleanly: what a host that lost power keeps when
// nothing since the snapshot was fsynced.
func powerLoss(t *testing.T, dir, volume string, snap map[string][]byte) {
	t.Helper()
	for name, b := range snap {
		must.NoError(t, os.WriteFile(filepath.Join(dir, volume, name), b, 0o600))
	}
	must.NoError(t, replica.MarkUnclean(dir, volume))
}

// waitConnected waits until the engine has a working connection to every
// in-sync replica (a restarted one is reconnected in the background).
func waitConnected(t *testing.T, e *Engine) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.order.Lock()
		set := e.targets
		e.order.Unlock()
		ok := true
		for _, tg := range set.inSync {
			ok = ok && tg.c != nil && tg.c.failure() == nil
		}
		if ok {
			return
		}
		must.True(t, time.Now().Before(deadline), must.Sprint("in-sync replicas not reconnected"))
		time.Sleep(10 * time.Millisecond)
	}
}

func readBack(t *testing.T, e *Engine, off int64, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	must.NoError(t, e.ReadAt(context.Background(), buf, off))
	return buf
}

func engineConfig(t *testing.T, volume string, size int64, epoch uint64, rs ...*testReplica) EngineConfig {
	cfg := EngineConfig{Volume: volume, Size: size, Epoch: epoch, Log: testLogger(t), Timeout: 2 * time.Second,
		ReconnectInterval: 20 * time.Millisecond}
	for _, r := range rs {
		cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: r.addr})
	}
	return cfg
}

// Scenario 2: write W reaches both replicas' page caches and completes;
// B's host loses power before B fsyncs; the next flush succeeds on A alone
// and B is dropped. When B returns it must get W back, so that A failing
// next loses nothing.
func TestPowerLostReplicaGetsUnflushedWritesBack(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir()}
	a, b := startTestReplica(t, dirs[0]), startTestReplica(t, dirs[1])
	const size = 16 << 20
	e := startTestEngine(t, "vol", size, 1, nil, a, b)
	ctx := context.Background()
	must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{1}, 8192), 0, false))
	must.NoError(t, e.Flush(ctx))
	// B's disk as of its last fsync (the meta is fsynced on every change).
	b.stop()
	snap := snapshotReplica(t, dirs[1], "vol")
	b = startTestReplicaAt(t, dirs[1], b.addr)
	waitInSync(t, e, 2)
	waitConnected(t, e)

	w := bytes.Repeat([]byte{2}, 8192)
	must.NoError(t, e.WriteAt(ctx, w, 5<<20, false)) // acknowledged by both
	b.stop()
	powerLoss(t, dirs[1], "vol", snap) // W never reached B's disk
	must.NoError(t, e.Flush(ctx))      // completes on A; B is dropped
	must.Eq(t, 1, e.Status().InSync)

	b = startTestReplicaBoot(t, dirs[1], b.addr, "after-power-loss")
	waitInSync(t, e, 2)
	must.NoError(t, e.Shutdown(ctx))

	// A is lost for good: B alone must hold W (the operator records B as
	// the in-sync set).
	a.stop()
	cfg := engineConfig(t, "vol", size, 2, b)
	rec := replicaMembership(t, b, "vol")
	cfg.Recorded = &rec
	e2, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e2.Close()
	must.Eq(t, w, readBack(t, e2, 5<<20, len(w)))
}

// Scenario 3: bitmap resync must not forget a chunk before the target
// holds it durably. A primary persists the bitmap while copies are only
// in the target's page cache, then crashes; the target loses power. The
// next primary's bitmap must still name those chunks.
func TestResyncKeepsBitsUntilTargetFlushed(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir()}
	a, b := startTestReplica(t, dirs[0]), startTestReplica(t, dirs[1])
	const size = 256 << 20
	ctx := context.Background()
	cfg := engineConfig(t, "vol", size, 1, a, b)
	cfg.ResyncRate = 2 << 20 // a chunk every half second: slow enough to stop it midway
	cfg.ActivityExtents = 16
	e, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e.Close()
	b.stop()
	for i := range 8 {
		p := bytes.Repeat([]byte{byte(10 + i)}, resyncChunk)
		must.NoError(t, e.WriteAt(ctx, p, int64(i)*4*resyncChunk, false))
	}
	// Writes to 16 other extents push those 8 out of the activity log:
	// from here on only B's bitmap says it misses them.
	for i := range 16 {
		must.NoError(t, e.WriteAt(ctx, []byte{1}, size/2+int64(i)*ExtentSize, false))
	}
	must.NoError(t, e.Flush(ctx))
	snap := snapshotReplica(t, dirs[1], "vol") // B's disk before the resync
	// Its metadata is written with fsync (the resync-target mark the
	// resync starts with among it): only the copies are lost.
	delete(snap, "meta")
	b = startTestReplicaAt(t, dirs[1], b.addr)
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := e.Status()
		if rs := st.Replicas[1].Resync; rs != nil && rs.SentBytes >= 2*resyncChunk && !rs.Finished {
			break
		}
		must.True(t, time.Now().Before(deadline), must.Sprint("resync did not copy two chunks"))
		time.Sleep(10 * time.Millisecond)
	}
	must.NoError(t, e.persistBitmaps(ctx, true))
	e.Close() // the primary crashes mid-resync
	b.stop()
	powerLoss(t, dirs[1], "vol", snap) // the copies never reached B's disk

	b = startTestReplicaBoot(t, dirs[1], b.addr, "after-power-loss")
	cfg2 := engineConfig(t, "vol", size, 2, a, b)
	cfg2.ActivityExtents = 16
	cfg2.Timeout = 10 * time.Second // nothing here waits for a timeout; reads of 1 MiB chunks under -race on a loaded machine took over 2 s
	e2, err := StartEngine(ctx, cfg2)
	must.NoError(t, err)
	defer e2.Close()
	st := waitInSync(t, e2, 2)
	must.Eq(t, "bitmap", st.Replicas[1].Resync.Mode)
	must.NoError(t, e2.Shutdown(ctx))
	must.Eq(t, fileSum(t, a.store.DataPath("vol")), fileSum(t, b.store.DataPath("vol")))
}

// Scenario 5: one discard over the whole of a large volume must not grow
// the activity log past its bound (and its metadata slot): no replica is
// dropped, and what lies outside the trimmed range is untouched.
func TestHugeTrimKeepsReplicasInSync(t *testing.T) {
	a, b := startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())
	const size = 64 << 30 // sparse: 16384 extents, far more than the log holds
	e := startTestEngine(t, "vol", size, 1, nil, a, b)
	ctx := context.Background()
	keep := bytes.Repeat([]byte("keep"), 1024)
	must.NoError(t, e.WriteAt(ctx, keep, size-int64(len(keep)), true))
	must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 0, true))
	must.NoError(t, e.Trim(ctx, 0, size-int64(len(keep))))
	st := e.Status()
	must.Eq(t, 2, st.InSync)
	must.LessEq(t, 128, st.HotExtents)
	must.Eq(t, keep, readBack(t, e, size-int64(len(keep)), len(keep)))
	must.Eq(t, make([]byte, 4096), readBack(t, e, 0, 4096))
}

// frameProxy forwards one TCP connection at a time to target and calls
// before(f) for each frame the client sends, before forwarding it.
type frameProxy struct {
	ln     net.Listener
	target string
	before func(wire.Frame)
	// after, if not nil, runs once a frame was passed on; true closes the
	// client's connection (it never gets the reply).
	after func(wire.Frame) bool
	// reply, if not nil, runs once a reply frame was passed back to the
	// client.
	reply func(wire.Frame)
	// refuse closes every new connection at once (the replica looks down).
	refuse atomic.Bool

	mu    sync.Mutex
	conns []net.Conn
}

func startFrameProxy(t *testing.T, target string, before func(wire.Frame)) *frameProxy {
	return startFrameProxyAfter(t, target, before, nil)
}

// startFrameProxyAfter is startFrameProxy with an after hook (see
// frameProxy.after).
func startFrameProxyAfter(t *testing.T, target string, before func(wire.Frame), after func(wire.Frame) bool) *frameProxy {
	return startFrameProxyFull(t, target, before, after, nil)
}

// startFrameProxyFull is startFrameProxyAfter with a reply hook (see
// frameProxy.reply).
func startFrameProxyFull(t *testing.T, target string, before func(wire.Frame), after func(wire.Frame) bool, reply func(wire.Frame)) *frameProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	p := &frameProxy{ln: ln, target: target, before: before, after: after, reply: reply}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); p.cut(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if p.refuse.Load() {
				c.Close()
				continue
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			p.mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				if p.reply == nil {
					io.Copy(c, s)
					return
				}
				for {
					f, err := wire.ReadFrame(s, nil)
					if err != nil {
						return
					}
					if _, err := c.Write(wire.AppendFrame(nil, &f)); err != nil {
						return
					}
					p.reply(f)
				}
			})
			wg.Go(func() {
				defer s.Close()
				for {
					f, err := wire.ReadFrame(c, nil)
					if err != nil {
						return
					}
					p.before(f)
					if _, err := s.Write(wire.AppendFrame(nil, &f)); err != nil {
						return
					}
					if p.after != nil && p.after(f) {
						c.Close()
						return
					}
				}
			})
		}
	})
	return p
}

// cut closes every client connection the proxy has accepted.
func (p *frameProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Found by the simulator: a full copy into a replica that is not new (an
// earlier pass wrote to it, or it holds data of unknown origin but no
// history) must clear what lies in the source's holes, not only copy the
// allocated ranges.
func TestFullResyncClearsStaleDataInSourceHoles(t *testing.T) {
	a, b := startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())
	const size = 16 << 20
	ctx := context.Background()
	e := startTestEngine(t, "vol", size, 1, nil, a)
	must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0, true))

	_, err := CreateReplica(ctx, nil, b.addr, "vol", size, time.Second)
	must.NoError(t, err)
	f, err := os.OpenFile(b.store.DataPath("vol"), os.O_RDWR, 0)
	must.NoError(t, err)
	_, err = f.WriteAt(bytes.Repeat([]byte("stale"), 1000), 5<<20)
	must.NoError(t, err)
	must.NoError(t, f.Close())

	e.AddReplica(ReplicaConfig{Addr: b.addr})
	st := waitInSync(t, e, 2)
	must.Eq(t, "full", st.Replicas[1].Resync.Mode)
	must.NoError(t, e.Shutdown(ctx))
	must.Eq(t, fileSum(t, a.store.DataPath("vol")), fileSum(t, b.store.DataPath("vol")))
}

// Found by the simulator: the last in-sync replica loses power with
// acknowledged writes not yet flushed; the flush in flight is sent again
// once it is back, and must not report them durable: they are gone. The
// next flush fails (once), as Linux reports a lost writeback to fsync.
func TestFlushFailsAfterLastReplicaLostPower(t *testing.T) {
	dir := t.TempDir()
	a := startTestReplica(t, dir)
	const size = 8 << 20
	ctx := context.Background()
	e := startTestEngine(t, "vol", size, 1, nil, a)
	must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0, true))
	a.stop()
	snap := snapshotReplica(t, dir, "vol")
	a = startTestReplicaAt(t, dir, a.addr)
	waitConnected(t, e)

	must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), 0, false)) // acknowledged, not flushed
	a.stop()
	powerLoss(t, dir, "vol", snap)
	a = startTestReplicaBoot(t, dir, a.addr, "after-power-loss")
	must.ErrorIs(t, e.Flush(ctx), ErrUnflushedLost)
	must.NoError(t, e.Flush(ctx))
	must.Eq(t, bytes.Repeat([]byte{1}, 4096), readBack(t, e, 0, 4096))

	// Flushes in flight while it is away (held, then resent once it is
	// back) all fail: each was asked to make that write durable.
	must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{3}, 4096), 0, false))
	a.stop()
	snap = snapshotReplica(t, dir, "vol")
	powerLoss(t, dir, "vol", snap)
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- e.Flush(ctx) }()
	}
	time.Sleep(100 * time.Millisecond) // all three sent and held
	a = startTestReplicaBoot(t, dir, a.addr, "after-a-second-power-loss")
	for range 3 {
		must.ErrorIs(t, <-errs, ErrUnflushedLost)
	}
	must.NoError(t, e.Flush(ctx))
	must.Eq(t, uint64(2), e.UnflushedLosses())
}

// A replica whose process crashed (its host did not restart) keeps the
// writes it had not flushed in the page cache, but they are not durable
// there until a flush on it completes. If its host loses power while it
// is being resynced, before that flush, those writes must still be
// resynced, even after their extents left the activity log.
func TestPowerLossDuringResyncAfterProcessCrash(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	a, b := startTestReplica(t, dirA), startTestReplica(t, dirB)
	var holdFlush atomic.Bool
	release := make(chan struct{})
	proxyB := startFrameProxy(t, b.addr, func(f wire.Frame) {
		if f.Type == wire.FrameFlush && holdFlush.Load() {
			<-release
		}
	})
	const size = 16 << 20
	cfg := engineConfig(t, "vol", size, 1, a)
	cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: proxyB.ln.Addr().String()})
	cfg.ActivityExtents = 2
	ctx := context.Background()
	e, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e.Close()
	waitInSync(t, e, 2)

	w := bytes.Repeat([]byte{7}, 8192)
	must.NoError(t, e.WriteAt(ctx, w, 0, false)) // W: on both, in page caches only
	b.stop()                                     // B's process crashes; its host keeps running
	must.NoError(t, e.WriteAt(ctx, []byte("x"), 1*ExtentSize, false))
	must.Eq(t, 1, e.Status().InSync)
	must.NoError(t, e.WriteAt(ctx, []byte("y"), 2*ExtentSize, false)) // W's extent leaves the log
	holdFlush.Store(true)
	b = startTestReplicaAt(t, dirB, b.addr) // same host, same boot: W still in its page cache
	deadline := time.Now().Add(10 * time.Second)
	for e.Status().Replicas[1].State != StateResyncing {
		must.True(t, time.Now().Before(deadline), must.Sprint("resync of B never started"))
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // its copies done, the rejoin's flush held
	// B's host loses power before that flush: W never reached its disk.
	b.stop()
	data, err := os.ReadFile(b.store.DataPath("vol"))
	must.NoError(t, err)
	copy(data[:len(w)], make([]byte, len(w)))
	must.NoError(t, os.WriteFile(b.store.DataPath("vol"), data, 0o600))
	must.NoError(t, replica.MarkUnclean(dirB, "vol"))
	holdFlush.Store(false)
	close(release)
	b = startTestReplicaBoot(t, dirB, b.addr, "after-power-loss")
	waitInSync(t, e, 2)
	must.NoError(t, e.Shutdown(ctx))

	// A is lost for good: B alone must hold W.
	a.stop()
	cfg2 := engineConfig(t, "vol", size, 2)
	cfg2.Replicas = []ReplicaConfig{{Addr: proxyB.ln.Addr().String()}}
	rec := replicaMembership(t, b, "vol")
	cfg2.Recorded = &rec
	e2, err := StartEngine(ctx, cfg2)
	must.NoError(t, err)
	defer e2.Close()
	must.Eq(t, w, readBack(t, e2, 0, len(w)))
}

// nextPrimary starts the engine of the primary at epoch over the replicas
// at addrs, from the in-sync record replica rec holds (as Consul would),
// and closes it when the test ends.
func nextPrimary(t *testing.T, epoch uint64, rec *testReplica, size int64, addrs ...string) *Engine {
	t.Helper()
	cfg := engineConfig(t, "vol", size, epoch)
	for _, a := range addrs {
		cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: a})
	}
	m := replicaMembership(t, rec, "vol")
	cfg.Recorded = &m
	e, err := StartEngine(context.Background(), cfg)
	must.NoError(t, err)
	t.Cleanup(e.Close)
	return e
}

// replicaData reads replica r's data file.
func replicaData(t *testing.T, r *testReplica) []byte {
	t.Helper()
	b, err := os.ReadFile(r.store.DataPath("vol"))
	must.NoError(t, err)
	return b
}

// fullFS is the real file system on which volume data files refuse writes
// with ENOSPC while full is set: a replica whose disk filled up.
type fullFS struct {
	replica.OSFS
	full *atomic.Bool
}

func (f fullFS) OpenFile(name string, flag int, perm fs.FileMode) (replica.File, error) {
	file, err := f.OSFS.OpenFile(name, flag, perm)
	if err != nil || filepath.Base(name) != "data" {
		return file, err
	}
	return fullFile{File: file, name: name, full: f.full}, nil
}

type fullFile struct {
	replica.File
	name string
	full *atomic.Bool
}

func (f fullFile) WriteAt(p []byte, off int64) (int, error) {
	if f.full.Load() {
		return 0, &fs.PathError{Op: "write", Path: f.name, Err: unix.ENOSPC}
	}
	return f.File.WriteAt(p, off)
}

// A replica being resynced acknowledges writes from its page cache like
// any other. When its resync ends because it failed (its host lost
// power), what it had not flushed must be marked as possibly lost, as for
// an in-sync replica that is dropped: else, once those writes' extents
// leave the activity log, no bitmap names them and the replica rejoins
// without them.
func TestResyncTargetLosingPowerGetsUnflushedWritesBack(t *testing.T) {
	dirB := t.TempDir()
	a, b := startTestReplica(t, t.TempDir()), startTestReplica(t, dirB)
	var armed atomic.Bool
	var chunkID atomic.Uint64
	chunkDone := make(chan struct{})
	var once sync.Once
	proxyB := startFrameProxyFull(t, b.addr, func(f wire.Frame) {
		if f.Type == wire.FrameWrite && f.Offset == 0 && armed.Load() {
			chunkID.CompareAndSwap(0, f.ID)
		}
	}, nil, func(f wire.Frame) {
		if id := chunkID.Load(); id != 0 && f.ID == id {
			once.Do(func() { close(chunkDone) })
		}
	})
	const size = 16 << 20
	cfg := engineConfig(t, "vol", size, 1, a)
	cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Addr: proxyB.ln.Addr().String()})
	cfg.ActivityExtents = 2
	// After copying B's one missed chunk the resync waits ~2 s before it
	// rejoins: the window in which W reaches B's page cache only.
	cfg.ResyncRate = 512 << 10
	ctx := context.Background()
	e, err := StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer e.Close()
	waitInSync(t, e, 2)

	// B falls behind by one chunk, then comes back and is resynced.
	proxyB.refuse.Store(true)
	proxyB.cut()
	must.NoError(t, e.WriteAt(ctx, bytes.Repeat([]byte{1}, resyncChunk), 0, false))
	must.Eq(t, 1, e.Status().InSync)
	armed.Store(true)
	proxyB.refuse.Store(false)
	<-chunkDone

	// W reaches both; B's host then loses power before flushing it.
	const woff = 2 * ExtentSize
	w := bytes.Repeat([]byte{2}, 4096)
	must.NoError(t, e.WriteAt(ctx, w, woff, false))
	proxyB.refuse.Store(true)
	b.stop()
	data, err := os.ReadFile(b.store.DataPath("vol"))
	must.NoError(t, err)
	copy(data[woff:woff+4096], make([]byte, 4096))
	must.NoError(t, os.WriteFile(b.store.DataPath("vol"), data, 0o600))
	must.NoError(t, replica.MarkUnclean(dirB, "vol"))
	deadline := time.Now().Add(10 * time.Second)
	for e.Status().Replicas[1].State == StateResyncing {
		must.True(t, time.Now().Before(deadline), must.Sprint("B's resync never ended"))
		time.Sleep(5 * time.Millisecond)
	}
	// W's extent leaves the activity log, then the primary crashes.
	must.NoError(t, e.WriteAt(ctx, []byte("x"), 1*ExtentSize, true))
	must.NoError(t, e.WriteAt(ctx, []byte("y"), 3*ExtentSize, true))
	must.SliceNotContains(t, e.al.all(), uint64(woff/ExtentSize))
	e.Close()

	// A is lost next: B, back and resynced by the next primary, must hold W.
	b = startTestReplicaBoot(t, dirB, b.addr, "after-power-loss")
	proxyB.refuse.Store(false)
	e2 := nextPrimary(t, 2, a, size, a.addr, proxyB.ln.Addr().String())
	waitInSync(t, e2, 2)
	must.NoError(t, e2.Shutdown(ctx))
	must.Eq(t, w, replicaData(t, b)[woff:woff+4096])
}
