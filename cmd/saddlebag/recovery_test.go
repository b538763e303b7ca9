package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication"
)

// replicaSet is a set of replica server processes, restartable on their
// old addresses.
type replicaSet struct {
	dirs, addrs []string
	procs       []*proc
}

func startReplicaSet(t *testing.T, n int) *replicaSet {
	rs := &replicaSet{}
	work := t.TempDir()
	for i := 0; i < n; i++ {
		d := filepath.Join(work, fmt.Sprintf("node%d", i))
		p, addr := startReplica(t, d)
		rs.dirs, rs.addrs, rs.procs = append(rs.dirs, d), append(rs.addrs, addr), append(rs.procs, p)
	}
	return rs
}

// restart starts replica i again, on its old address and data dir.
func (rs *replicaSet) restart(t *testing.T, i int) {
	t.Helper()
	p := startProc(t, "replica", "--insecure", "--data-dir", rs.dirs[i], "--listen", rs.addrs[i])
	p.waitLine(t, replicaAddrRE, 10*time.Second)
	rs.procs[i] = p
}

func (rs *replicaSet) engineConfig(t *testing.T, volume string, size int64, epoch uint64) replication.EngineConfig {
	cfg := replication.EngineConfig{Volume: volume, Size: size, Epoch: epoch, Timeout: 5 * time.Second,
		ReconnectInterval: 100 * time.Millisecond, ProgressInterval: time.Second,
		Log: hclog.New(&hclog.LoggerOptions{Output: testWriter{t}, Level: hclog.Info})}
	for _, a := range rs.addrs {
		cfg.Replicas = append(cfg.Replicas, replication.ReplicaConfig{Addr: a})
	}
	return cfg
}

func startInProcessEngine(t *testing.T, cfg replication.EngineConfig) *replication.Engine {
	t.Helper()
	eng, err := replication.StartEngine(context.Background(), cfg)
	must.NoError(t, err)
	t.Cleanup(eng.Close)
	return eng
}

func waitEngineInSync(t *testing.T, eng *replication.Engine, n int, timeout time.Duration) replication.EngineStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := eng.Status()
		if st.InSync == n {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("in sync: %d, want %d: %+v", st.InSync, n, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReplicaBackAfterOutage: a replica is SIGKILLed, writes go on, and it
// comes back: resync sends it only what it missed (bitmap), at most 1.1
// times the bytes written while it was away, and it ends byte-identical.
func TestReplicaBackAfterOutage(t *testing.T) {
	rs := startReplicaSet(t, 3)
	const size = 256 << 20
	eng := startInProcessEngine(t, rs.engineConfig(t, "v", size, 1))
	ctx := context.Background()
	r := mrand.New(mrand.NewPCG(1, 2))
	write := func() int64 {
		n := int64(4096 * (1 + r.IntN(32)))
		off := int64(r.IntN(size/4096-32)) * 4096
		p := make([]byte, n)
		rand.Read(p)
		must.NoError(t, eng.WriteAt(ctx, p, off, false))
		return n
	}
	for i := 0; i < 200; i++ {
		write()
	}
	rs.procs[2].kill()
	var away int64
	for away < 24<<20 {
		away += write()
	}
	must.Eq(t, 2, eng.Status().InSync)
	rs.restart(t, 2)
	st := waitEngineInSync(t, eng, 3, 60*time.Second)
	sent := st.Replicas[2].Resync.SentBytes
	t.Logf("written while away: %d bytes; sent to bring it back: %d bytes (%.3fx)", away, sent, float64(sent)/float64(away))
	fmt.Printf("resync: written_while_away_bytes %d sent_bytes %d\n", away, sent)
	must.Eq(t, "bitmap", st.Replicas[2].Resync.Mode)
	must.LessEq(t, away*11/10, sent)
	must.NoError(t, eng.Shutdown(ctx))
	for _, p := range rs.procs {
		p.stop()
	}
	want := sha256File(t, dataFile(rs.dirs[0], "v"))
	for _, d := range rs.dirs[1:] {
		must.Eq(t, want, sha256File(t, dataFile(d, "v")))
	}
}

// nbdsh runs an nbdsh script against a socket.
func nbdsh(sock, script string) *exec.Cmd {
	cmd := exec.Command("nbdsh", "-u", nbdURI(sock), "-c", script)
	// nbdsh runs "python3" from PATH and needs Debian's, which has the
	// nbd module, not another one earlier on PATH.
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:/usr/sbin:/sbin")
	return cmd
}

// randomWriter keeps 16 writes in flight to distinct random 4 KiB blocks,
// each stamped with (sequence, block), and prints "seq block" as each one
// completes, until it fails.
const randomWriter = `
import random, sys
nblk = h.get_size() // 4096
rnd = random.Random(11)
pending = {}
busy = set()
seq = 0
try:
    while True:
        while len(pending) < 16:
            seq += 1
            blk = rnd.randrange(nblk)
            while blk in busy:
                blk = rnd.randrange(nblk)
            buf = bytearray((seq.to_bytes(8, "little") + blk.to_bytes(8, "little")) * 256)
            c = h.aio_pwrite(nbd.Buffer.from_bytearray(buf), blk * 4096)
            pending[c] = (seq, blk)
            busy.add(blk)
        h.poll(-1)
        for c in list(pending):
            if h.aio_command_completed(c):
                s, b = pending.pop(c)
                busy.discard(b)
                print(s, b, flush=True)
except Exception as e:
    print("stopped:", e, file=sys.stderr, flush=True)
`

// TestPrimaryKilledDuringRandomWrites: the engine process is SIGKILLed
// under a random-write workload that records which writes completed. A new
// engine at epoch N+1 over the surviving replicas reconciles only the hot
// extents, finds every completed write, and the replicas end identical.
func TestPrimaryKilledDuringRandomWrites(t *testing.T) {
	requireTool(t, "nbdsh")
	rs := startReplicaSet(t, 3)
	const size = 1 << 30 // 256 extents: more than the activity log holds
	eng, sock := startEngine(t, "v", "1GiB", "4", rs.addrs...)

	wl := nbdsh(sock, randomWriter)
	out, err := wl.StdoutPipe()
	must.NoError(t, err)
	var stderr bytes.Buffer
	wl.Stderr = &stderr
	must.NoError(t, wl.Start())
	t.Cleanup(func() { wl.Process.Kill(); wl.Wait() })

	completed := map[uint64]uint64{} // block -> last completed seq
	sc := bufio.NewScanner(out)
	n := 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		seq, _ := strconv.ParseUint(f[0], 10, 64)
		blk, _ := strconv.ParseUint(f[1], 10, 64)
		completed[blk] = max(completed[blk], seq)
		if n++; n == 3000 {
			eng.kill() // mid-stream: writes are in flight
		}
	}
	wl.Wait()
	must.GreaterEq(t, 3000, n, must.Sprint("workload stopped early: ", stderr.String()))
	t.Logf("%d writes completed before the kill", n)

	cfg := rs.engineConfig(t, "v", size, 5)
	next := startInProcessEngine(t, cfg)
	st := next.Status()
	t.Logf("reconciliation: %d hot extents, compared %d bytes (%d per replica; volume %d), repaired %d blocks",
		st.Reconcile.Extents, st.Reconcile.ComparedBytes, st.Reconcile.ComparedBytes/3, size, st.Reconcile.RepairedBlocks)
	fmt.Printf("reconcile: hot_extents %d compared_bytes %d volume_bytes %d\n", st.Reconcile.Extents, st.Reconcile.ComparedBytes, int64(size))
	must.Positive(t, st.Reconcile.Extents)
	must.LessEq(t, int64(128), st.Reconcile.Extents) // never more than the log holds
	must.Eq(t, st.Reconcile.Extents*replication.ExtentSize*3, st.Reconcile.ComparedBytes)

	ctx := context.Background()
	buf := make([]byte, 4096)
	missing := 0
	for blk, seq := range completed {
		must.NoError(t, next.ReadAt(ctx, buf, int64(blk)*4096))
		if binary.LittleEndian.Uint64(buf[8:]) != blk || binary.LittleEndian.Uint64(buf) < seq {
			missing++
		}
	}
	must.Zero(t, missing, must.Sprintf("completed writes missing out of %d blocks", len(completed)))
	must.NoError(t, next.Shutdown(ctx))
	for _, p := range rs.procs {
		p.stop()
	}
	want := sha256File(t, dataFile(rs.dirs[0], "v"))
	for _, d := range rs.dirs[1:] {
		must.Eq(t, want, sha256File(t, dataFile(d, "v")))
	}
}

// TestMinInSyncWithKilledReplicas: with min_in_sync=2, two of three
// replicas killed, writes do not complete; one comes back, resyncs, and
// they complete, with nothing completed before lost.
func TestMinInSyncWithKilledReplicas(t *testing.T) {
	rs := startReplicaSet(t, 3)
	cfg := rs.engineConfig(t, "v", 64<<20, 1)
	cfg.MinInSync = 2
	eng := startInProcessEngine(t, cfg)
	ctx := context.Background()
	before := bytes.Repeat([]byte("before!!"), 512)
	for i := int64(0); i < 64; i++ {
		must.NoError(t, eng.WriteAt(ctx, before, i<<20, false))
	}
	rs.procs[1].kill()
	rs.procs[2].kill()
	done := make(chan error, 1)
	go func() { done <- eng.WriteAt(ctx, []byte("during"), 5<<20+4096, false) }()
	select {
	case err := <-done:
		t.Fatalf("a write completed with 1 replica in sync and min_in_sync=2: %v", err)
	case <-time.After(time.Second):
	}
	must.True(t, eng.Status().InSync == 1)
	rs.restart(t, 1)
	select {
	case err := <-done:
		must.NoError(t, err)
	case <-time.After(60 * time.Second):
		t.Fatal("the held write did not complete after a replica came back")
	}
	buf := make([]byte, len(before))
	for i := int64(0); i < 64; i++ {
		must.NoError(t, eng.ReadAt(ctx, buf, i<<20))
		must.Eq(t, before, buf)
	}
	must.NoError(t, eng.Shutdown(ctx))
	rs.procs[0].stop()
	rs.procs[1].stop()
	must.Eq(t, sha256File(t, dataFile(rs.dirs[0], "v")), sha256File(t, dataFile(rs.dirs[1], "v")))
}

// TestReplicaDiskFull: one replica's disk fills up; it is dropped with an
// error naming it and the cause, and the volume goes on with the others.
func TestReplicaDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a small tmpfs: run it as root")
	}
	rs := startReplicaSet(t, 2)
	small := t.TempDir()
	must.NoError(t, exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", small).Run())
	t.Cleanup(func() { exec.Command("umount", "-l", small).Run() })
	p, addr := startReplica(t, small)
	t.Cleanup(p.stop) // runs before the unmount
	rs.addrs, rs.procs, rs.dirs = append(rs.addrs, addr), append(rs.procs, p), append(rs.dirs, small)

	eng := startInProcessEngine(t, rs.engineConfig(t, "v", 64<<20, 1))
	ctx := context.Background()
	chunk := bytes.Repeat([]byte{0x5a}, 1<<20)
	for i := int64(0); i < 32; i++ {
		must.NoError(t, eng.WriteAt(ctx, chunk, i<<20, false))
	}
	must.NoError(t, eng.Flush(ctx))
	st := eng.Status()
	must.Eq(t, 2, st.InSync)
	full := st.Replicas[2]
	must.NotEq(t, replication.StateInSync, full.State) // dropped, or retrying resync
	must.StrContains(t, full.Reason, addr)
	must.StrContains(t, full.Reason, "no space left")
	buf := make([]byte, 1<<20)
	must.NoError(t, eng.ReadAt(ctx, buf, 31<<20))
	must.Eq(t, chunk, buf)
}

// TestResyncProgressAndStatus: the engine command logs resync progress at
// a steady interval and serves it to `saddlebag status`.
func TestResyncProgressAndStatus(t *testing.T) {
	requireTool(t, "nbdcopy")
	rs := startReplicaSet(t, 1)
	work := t.TempDir()
	img := filepath.Join(work, "img")
	f, err := os.Create(img)
	must.NoError(t, err)
	_, err = f.Write(bytes.Repeat([]byte{0xab}, 32<<20))
	must.NoError(t, err)
	f.Close()
	eng, sock := startEngine(t, "v", "32MiB", "1", rs.addrs...)
	out, err := exec.Command("nbdcopy", "--flush", img, nbdURI(sock)).CombinedOutput()
	must.NoError(t, err, must.Sprint(string(out)))
	eng.stop()

	// A new, empty replica beside the full one: a full copy at 8 MiB/s.
	_, addr := startReplica(t, filepath.Join(work, "fresh"))
	status := "127.0.0.1:" + strconv.Itoa(freePort(t))
	p := startProc(t, "engine", "--insecure", "--volume", "v", "--size", "32MiB", "--epoch", "2", "--replica", rs.addrs[0],
		"--replica", addr, "--nbd-socket", filepath.Join(work, "nbd2.sock"), "--resync-rate", "8MiB",
		"--progress-interval", "500ms", "--status-addr", status)
	m := p.waitLine(t, regexpMust(`resync progress: .*mode=full percent=(\S+) .*eta=(\S+)`), 30*time.Second)
	t.Logf("progress line: %v", m)
	stOut, err := exec.Command(saddlebagBin, "status", "--addr", status).CombinedOutput()
	must.NoError(t, err, must.Sprint(string(stOut)))
	must.StrContains(t, string(stOut), "resync full")
	must.StrContains(t, string(stOut), "eta")
	p.waitLine(t, regexpMust(`resync complete: replica back in sync`), 30*time.Second)
	stOut, err = exec.Command(saddlebagBin, "status", "--addr", status).CombinedOutput()
	must.NoError(t, err)
	must.StrContains(t, string(stOut), "in sync 2 of 2")
}
