package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication"
)

func sha256File(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	must.NoError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	must.NoError(t, err)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

func dataFile(dir, volume string) string { return filepath.Join(dir, volume, "data") }

// TestNBDCopyRoundTrip: a real NBD client (nbdcopy, from libnbd) copies a
// 256 MiB random image into a 3-replica volume and back out.
func TestNBDCopyRoundTrip(t *testing.T) {
	requireTool(t, "nbdcopy")
	work := t.TempDir()
	src := filepath.Join(work, "src.img")
	f, err := os.Create(src)
	must.NoError(t, err)
	_, err = io.CopyN(f, rand.Reader, 256<<20)
	must.NoError(t, err)
	must.NoError(t, f.Close())

	var dirs, addrs []string
	for i := 0; i < 3; i++ {
		d := filepath.Join(work, fmt.Sprintf("node%d", i))
		_, addr := startReplica(t, d)
		dirs, addrs = append(dirs, d), append(addrs, addr)
	}
	eng, sock := startEngine(t, "pg-data", "256MiB", "1", addrs...)

	run := func(args ...string) {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		must.NoError(t, err, must.Sprintf("%s: %s", strings.Join(args, " "), out))
	}
	run("nbdcopy", "--flush", src, nbdURI(sock))
	dst := filepath.Join(work, "dst.img")
	run("nbdcopy", nbdURI(sock), dst)

	want := sha256File(t, src)
	must.Eq(t, want, sha256File(t, dst), must.Sprint("copied back out"))
	eng.stop() // flushes and closes the replicas cleanly
	for _, d := range dirs {
		must.Eq(t, want, sha256File(t, dataFile(d, "pg-data")), must.Sprint("replica in", d))
	}
}

// TestReplicaKilledDuringWrites: SIGKILL one of three replica processes
// in the middle of a write stream. Writes go on, the engine reports the
// replica dropped, and every write that completed is on both survivors.
func TestReplicaKilledDuringWrites(t *testing.T) {
	work := t.TempDir()
	var procs []*proc
	var dirs []string
	cfg := replication.EngineConfig{Volume: "v", Size: 64 << 20, Epoch: 1, Timeout: 5 * time.Second,
		Log: hclog.New(&hclog.LoggerOptions{Output: testWriter{t}, Level: hclog.Info})}
	hook := &hookLog{}
	cfg.Hook = hook
	for i := 0; i < 3; i++ {
		d := filepath.Join(work, fmt.Sprintf("node%d", i))
		p, addr := startReplica(t, d)
		procs, dirs = append(procs, p), append(dirs, d)
		cfg.Replicas = append(cfg.Replicas, replication.ReplicaConfig{Addr: addr})
	}
	ctx := context.Background()
	eng, err := replication.StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer eng.Close()

	// Eight writers each own a stripe of 4 KiB blocks and write a block
	// stamped with (block, sequence); completed[block] is the last sequence
	// whose write returned nil.
	const blocks = (64 << 20) / 4096
	var completed [blocks]atomic.Uint64
	var wrote atomic.Int64
	stopWriters := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Go(func() {
			buf := make([]byte, 4096)
			for seq := uint64(1); ; seq++ {
				select {
				case <-stopWriters:
					return
				default:
				}
				b := uint64(w) + 8*(seq%(blocks/8))
				binary.LittleEndian.PutUint64(buf[0:], b)
				binary.LittleEndian.PutUint64(buf[8:], seq)
				if err := eng.WriteAt(ctx, buf, int64(b)*4096, false); err != nil {
					t.Errorf("write block %d: %v", b, err)
					return
				}
				completed[b].Store(seq)
				wrote.Add(1)
			}
		})
	}
	for wrote.Load() < 2000 {
		time.Sleep(time.Millisecond)
	}
	procs[1].kill()
	killedAt := wrote.Load()
	for wrote.Load() < killedAt+2000 {
		time.Sleep(time.Millisecond)
	}
	close(stopWriters)
	wg.Wait()
	must.NoError(t, eng.Flush(ctx))

	st := eng.Status()
	must.Eq(t, 2, st.InSync)
	must.Eq(t, replication.StateDropped, st.Replicas[1].State)
	must.Eq(t, []string{cfg.Replicas[0].Addr, cfg.Replicas[2].Addr}, hook.last())
	eng.Close()
	procs[0].stop()
	procs[2].stop()

	for _, d := range []string{dirs[0], dirs[2]} {
		data, err := os.ReadFile(dataFile(d, "v"))
		must.NoError(t, err)
		missing := 0
		for b := range completed {
			seq := completed[b].Load()
			if seq == 0 {
				continue
			}
			blk := data[b*4096 : b*4096+16]
			if binary.LittleEndian.Uint64(blk) != uint64(b) || binary.LittleEndian.Uint64(blk[8:]) < seq {
				missing++
			}
		}
		must.Zero(t, missing, must.Sprintf("completed writes missing from %s", d))
	}
	t.Logf("%d writes completed, %d after the kill", wrote.Load(), wrote.Load()-killedAt)
}

// TestEngineProcessFenced: a second engine process at a higher epoch
// contacts the replicas; the first then completes no write.
func TestEngineProcessFenced(t *testing.T) {
	requireTool(t, "nbdsh")
	work := t.TempDir()
	var addrs []string
	for i := 0; i < 2; i++ {
		_, addr := startReplica(t, filepath.Join(work, fmt.Sprintf("node%d", i)))
		addrs = append(addrs, addr)
	}
	old, oldSock := startEngine(t, "v", "16MiB", "7", addrs...)
	nbdsh := func(sock, script string) ([]byte, error) {
		cmd := exec.Command("nbdsh", "-u", nbdURI(sock), "-c", script)
		// nbdsh runs "python3" from PATH and needs Debian's, which has the
		// nbd module, not another one earlier on PATH.
		cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:/usr/sbin:/sbin")
		return cmd.CombinedOutput()
	}
	out, err := nbdsh(oldSock, `h.pwrite(b"A"*4096, 0)`)
	must.NoError(t, err, must.Sprint(string(out)))

	_, newSock := startEngine(t, "v", "16MiB", "8", addrs...)
	// Every one of 20 writes from the old engine fails.
	out, err = nbdsh(oldSock, `
ok = 0
for i in range(20):
    try:
        h.pwrite(b"B"*4096, i*4096)
        ok += 1
    except nbd.Error:
        pass
print("accepted", ok)
`)
	must.NoError(t, err, must.Sprint(string(out)))
	must.StrContains(t, string(out), "accepted 0")
	old.waitLine(t, regexpMust(`engine fenced: refusing all further I/O`), 5*time.Second)

	out, err = nbdsh(newSock, `print(h.pread(8192, 0) == b"A"*4096 + bytes(4096))`)
	must.NoError(t, err, must.Sprint(string(out)))
	must.StrContains(t, string(out), "True")
}

func TestBadFlagsExitWithOneLine(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"engine", "--volume", "v", "--size", "1000", "--epoch", "1", "--replica", "x:1", "--nbd-socket", "s"}, "multiple of 4096"},
		{[]string{"engine", "--volume", "v", "--size", "10 parsecs", "--epoch", "1"}, "invalid size"},
		// G is 10^9, as in a Nomad volume spec: not a whole number of 4 KiB blocks.
		{[]string{"engine", "--volume", "v", "--size", "1G", "--epoch", "1", "--replica", "x:1", "--nbd-socket", "s"}, "--size 1GB: invalid request: volume size 1000000000 is not a positive multiple of 4096 bytes (4 KiB) (GiB, MiB and KiB are powers of 1024; G, GB, M, MB, k and kB powers of 1000"},
		{[]string{"engine", "--size", "1GiB"}, "--volume is required"},
		{[]string{"engine", "--volume", "v", "--size", "1GiB", "--epoch", "1", "--nbd-socket", "s"}, "--replica is required"},
		{[]string{"replica", "--data-dir", "/tmp/x"}, "--listen are required"},
		{[]string{"replica", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"frobnicate"}, "unknown command"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			cmd := exec.Command(saddlebagBin, c.args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			must.True(t, errors.As(err, &ee), must.Sprint("want a non-zero exit"))
			must.Eq(t, 2, ee.ExitCode())
			must.StrContains(t, stderr.String(), c.want)
			must.Eq(t, 1, strings.Count(stderr.String(), "\n"), must.Sprint(stderr.String()))
		})
	}
}

type hookLog struct {
	mu   sync.Mutex
	sets [][]string
}

func (h *hookLog) SetInSync(_ context.Context, _, _ uint64, set []string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sets = append(h.sets, set)
	return nil
}

func (h *hookLog) last() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sets[len(h.sets)-1]
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
