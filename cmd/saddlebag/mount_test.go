package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/plugin/mount"
)

const mountVolSize = 512 << 20 // mkfs.xfs wants at least 300 MiB

func startReplicas(t *testing.T, n int) []string {
	t.Helper()
	work := t.TempDir()
	var addrs []string
	for i := 0; i < n; i++ {
		_, addr := startReplica(t, filepath.Join(work, fmt.Sprintf("replica%d", i)))
		addrs = append(addrs, addr)
	}
	return addrs
}

// writeSynced writes a file and fsyncs it and its directory.
func writeSynced(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.Create(path)
	must.NoError(t, err)
	_, err = f.Write(data)
	must.NoError(t, err)
	must.NoError(t, f.Sync())
	must.NoError(t, f.Close())
	d, err := os.Open(filepath.Dir(path))
	must.NoError(t, err)
	must.NoError(t, d.Sync())
	must.NoError(t, d.Close())
}

// TestMountedVolumeMovesToAnotherNode, for ext4 and xfs on a 3-replica
// volume: files written with fsync on one node are intact, and the file
// system checks clean, when a new engine at a higher epoch mounts the
// volume on another node. The volume's file system is never reformatted
// (a marker file survives every restart) and asking for the other type is
// refused with a clear error.
func TestMountedVolumeMovesToAnotherNode(t *testing.T) {
	for _, c := range []struct{ fs, other string }{{mount.FSExt4, mount.FSXFS}, {mount.FSXFS, mount.FSExt4}} {
		t.Run(c.fs, func(t *testing.T) {
			const vol = "pgdata"
			addrs := startReplicas(t, 3)
			node1, node2 := newNode(t, vol), newNode(t, vol)

			e1 := startMountedEngine(t, node1, vol, "512MiB", "1", c.fs, addrs...)
			e1.waitLine(t, regexpMust(`making file system`), time.Second)
			want := map[string][32]byte{}
			must.NoError(t, os.MkdirAll(filepath.Join(node1.mount, "data"), 0o755))
			for i := 0; i < 24; i++ {
				data := make([]byte, 4096<<(i%9))
				rand.Read(data)
				name := fmt.Sprintf("data/file%02d", i)
				writeSynced(t, filepath.Join(node1.mount, name), data)
				want[name] = sha256.Sum256(data)
			}
			writeSynced(t, filepath.Join(node1.mount, "marker"), []byte("formatted once"))
			e1.stop()
			// SIGTERM unwinds in order: file system, loop device, FUSE, engine.
			e1.waitInOrder(t, `mount: unmounted`, `loop device detached`, `fuse file unmounted`, `engine stopped`)
			assertNodeClean(t, node1, vol)

			fsckVolume(t, vol, mountVolSize, 2, c.fs, addrs...)

			e2 := startMountedEngine(t, node2, vol, "512MiB", "3", c.fs, addrs...)
			e2.waitLine(t, regexpMust(`found existing file system`), time.Second)
			for name, sum := range want {
				data, err := os.ReadFile(filepath.Join(node2.mount, name))
				must.NoError(t, err)
				must.Eq(t, sum, sha256.Sum256(data), must.Sprint(name))
			}
			e2.stop()
			assertNodeClean(t, node2, vol)

			// The other file system type is refused, and nothing changes.
			wrong := startProc(t, "engine", "--insecure", "--volume", vol, "--size", "512MiB", "--epoch", "4", "--mount", node2.mount,
				"--fuse-dir", node2.fuseDir, "--fs-type", c.other, "--replica", addrs[0], "--replica", addrs[1], "--replica", addrs[2])
			<-wrong.done
			must.Eq(t, 1, wrong.cmd.ProcessState.ExitCode())
			wrong.waitLine(t, regexpMust(fmt.Sprintf(`holds a %s file system, not %s: refusing to mount or reformat it`, c.fs, c.other)), time.Second)
			assertNodeClean(t, node2, vol)

			e3 := startMountedEngine(t, node2, vol, "512MiB", "5", c.fs, addrs...)
			got, err := os.ReadFile(filepath.Join(node2.mount, "marker"))
			must.NoError(t, err)
			must.Eq(t, "formatted once", string(got))
			e3.stop()
		})
	}
}

const recordSize = 4096

func record(seq uint64) []byte {
	b := bytes.Repeat([]byte{byte(seq)}, recordSize)
	binary.LittleEndian.PutUint64(b, seq)
	copy(b[8:], "saddlebag-record")
	return b
}

// TestEngineKilledUnderMountRecovers: SIGKILL the engine while a writer
// fsyncs a file every few milliseconds. The node's recovery leaves no
// mount or loop device behind; on another node, a new engine finds every
// write whose fsync returned, and the file system checks clean.
func TestEngineKilledUnderMountRecovers(t *testing.T) {
	for _, fsType := range []string{mount.FSExt4, mount.FSXFS} {
		t.Run(fsType, func(t *testing.T) {
			const vol = "journal"
			addrs := startReplicas(t, 3)
			node1, node2 := newNode(t, vol), newNode(t, vol)
			e1 := startMountedEngine(t, node1, vol, "512MiB", "1", fsType, addrs...)

			f, err := os.OpenFile(filepath.Join(node1.mount, "log"), os.O_RDWR|os.O_CREATE, 0o644)
			must.NoError(t, err)
			var acked atomic.Uint64
			writerDone := make(chan error, 1)
			go func() {
				// The file is closed before the test hears of the failure:
				// an open file would keep the dead file system (and so its
				// loop device) alive after the lazy unmount.
				var err error
				for seq := uint64(1); err == nil; seq++ {
					if _, err = f.WriteAt(record(seq), int64(seq-1)*recordSize); err == nil {
						if err = f.Sync(); err == nil {
							acked.Store(seq)
							time.Sleep(2 * time.Millisecond)
						}
					}
				}
				f.Close()
				writerDone <- err
			}()
			deadline := time.Now().Add(60 * time.Second)
			for acked.Load() < 150 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			must.Greater(t, uint64(149), acked.Load(), must.Sprint("writer made too little progress"))
			e1.kill()
			select {
			case err := <-writerDone:
				t.Logf("writer stopped after the kill: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("writer still blocked 30s after the engine was killed")
			}
			last := acked.Load()

			res, err := mount.Recover(context.Background(), mount.RecoverRequest{FUSEDir: node1.fuseDir, BackingFile: node1.backing(vol)})
			must.NoError(t, err)
			must.Eq(t, mount.ServerDead, res.Server)
			must.Zero(t, len(res.Pending))
			assertNodeClean(t, node1, vol)

			e2 := startMountedEngine(t, node2, vol, "512MiB", "2", fsType, addrs...)
			data, err := os.ReadFile(filepath.Join(node2.mount, "log"))
			must.NoError(t, err)
			must.GreaterEq(t, int(last)*recordSize, len(data), must.Sprint("file shorter than the fsynced writes"))
			missing := 0
			for seq := uint64(1); seq <= last; seq++ {
				if !bytes.Equal(record(seq), data[(seq-1)*recordSize:seq*recordSize]) {
					missing++
				}
			}
			must.Zero(t, missing, must.Sprintf("%d of %d fsynced records missing or wrong", missing, last))
			t.Logf("%d fsynced records intact after SIGKILL and failover", last)
			e2.stop()
			assertNodeClean(t, node2, vol)
			fsckVolume(t, vol, mountVolSize, 3, fsType, addrs...)
		})
	}
}

// TestEngineMountFlags: --mount and --nbd-socket are exclusive, and the
// file system type, and the size against it, are checked before anything
// starts.
func TestEngineMountFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--mount", "/mnt/x", "--nbd-socket", "s"}, "exclusive"},
		{[]string{"--mount", "/mnt/x", "--fs-type", "btrfs"}, "unsupported file system type"},
		// Too small for the file system: said before mkfs, by the spec checks' rule.
		{[]string{"--mount", "/mnt/x", "--fs-type", "xfs", "--size", "256MiB"}, `--size 256MiB: xfs needs a volume of at least 300MiB, not 256MiB; make the volume 300MiB or larger, or use ext4`},
		{[]string{"--mount", "/mnt/x", "--size", "4MiB"}, `--size 4MiB: ext4 needs a volume of at least 8MiB, not 4MiB`},
		{nil, "--nbd-socket or --mount is required"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			args := append([]string{"engine", "--volume", "v", "--size", "1GiB", "--epoch", "1", "--replica", "127.0.0.1:1"}, c.args...)
			p := startProc(t, args...)
			<-p.done
			must.Eq(t, 2, p.cmd.ProcessState.ExitCode())
			p.waitLine(t, regexpMust(c.want), time.Second)
		})
	}
}

// TestHungEngineRecovered: an engine that stops answering (SIGSTOP) blocks
// I/O on its mount forever; the node's recovery finds it hung, aborts the
// FUSE connection and leaves nothing mounted, and another node can then
// mount the volume.
func TestHungEngineRecovered(t *testing.T) {
	const vol = "stuck"
	addrs := startReplicas(t, 2)
	node1, node2 := newNode(t, vol), newNode(t, vol)
	e1 := startMountedEngine(t, node1, vol, "512MiB", "1", mount.FSExt4, addrs...)
	writeSynced(t, filepath.Join(node1.mount, "before"), []byte("synced before the hang"))
	must.NoError(t, e1.cmd.Process.Signal(syscall.SIGSTOP))
	t.Cleanup(e1.kill) // SIGKILL ends a stopped process too

	res, err := mount.Recover(context.Background(), mount.RecoverRequest{FUSEDir: node1.fuseDir, BackingFile: node1.backing(vol),
		ProbeTimeout: time.Second})
	must.NoError(t, err)
	must.Eq(t, mount.ServerHung, res.Server)
	must.True(t, res.Aborted)
	assertNodeClean(t, node1, vol)

	e1.kill()
	e2 := startMountedEngine(t, node2, vol, "512MiB", "2", mount.FSExt4, addrs...)
	got, err := os.ReadFile(filepath.Join(node2.mount, "before"))
	must.NoError(t, err)
	must.Eq(t, "synced before the hang", string(got))
	e2.stop()
}

// TestSecondEngineOnSameNodeRefusedWithoutFencing: an engine started by
// mistake over a FUSE directory a live engine serves is refused before it
// promises its epoch, so the live engine keeps serving.
func TestSecondEngineOnSameNodeRefusedWithoutFencing(t *testing.T) {
	replicas := startReplicas(t, 2)
	n := newNode(t, "v")
	first := startMountedEngine(t, n, "v", "64MiB", "1", "ext4", replicas...)
	args := []string{"engine", "--insecure", "--volume", "v", "--size", "64MiB", "--epoch", "2", "--mount", n.mount + "2", "--fuse-dir", n.fuseDir}
	for _, r := range replicas {
		args = append(args, "--replica", r)
	}
	out, err := exec.Command(saddlebagBin, args...).CombinedOutput()
	must.Error(t, err)
	must.StrContains(t, string(out), "clear what an earlier engine left")
	must.StrNotContains(t, string(out), "engine started") // refused before promising its epoch
	// The first engine was not fenced: a write through its mount is durable.
	writeSynced(t, filepath.Join(n.mount, "still-serving"), []byte("yes"))
	first.stop()
	first.waitLine(t, regexpMust(`engine stopped: .*fenced=false`), 30*time.Second)
}
