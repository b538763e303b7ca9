package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/plugin/mount"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/frontend/fuse"
)

// node is one simulated node's paths for a mounted volume.
type node struct {
	mount, fuseDir string
}

func (n node) backing(volume string) string { return filepath.Join(n.fuseDir, volume) }

// newNode makes a node's directories and registers a cleanup that tears
// down whatever a test left mounted there (after the processes the test
// started are stopped: cleanups run last-registered first, and this is
// registered before them).
func newNode(t *testing.T, volume string) node {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir()
	n := node{mount: filepath.Join(dir, "mnt"), fuseDir: filepath.Join(dir, "fuse")}
	t.Cleanup(func() {
		_, err := mount.Recover(context.Background(), mount.RecoverRequest{FUSEDir: n.fuseDir, BackingFile: n.backing(volume), Force: true})
		if err != nil {
			t.Errorf("cleanup of %s: %v", dir, err)
		}
	})
	return n
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("mount tests attach loop devices and mount file systems: run them as root")
	}
	for _, tool := range []string{"mkfs.ext4", "mkfs.xfs", "e2fsck", "xfs_repair", "blkid"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err := os.Stat("/usr/sbin/" + tool); err != nil {
				t.Fatalf("%s not found: run `make deps`", tool)
			}
		}
	}
}

var volumeMountedRE = regexpMust(`volume mounted`)

// startMountedEngine runs `saddlebag engine --mount` on node n and waits
// until the file system is mounted.
func startMountedEngine(t *testing.T, n node, volume, size, epoch, fsType string, replicas ...string) *proc {
	t.Helper()
	args := []string{"engine", "--insecure", "--volume", volume, "--size", size, "--epoch", epoch,
		"--mount", n.mount, "--fuse-dir", n.fuseDir, "--fs-type", fsType, "--mount-flags", "noatime"}
	for _, r := range replicas {
		args = append(args, "--replica", r)
	}
	p := startProc(t, args...)
	p.waitLine(t, volumeMountedRE, 90*time.Second)
	return p
}

// fsckVolume serves the volume from this process at epoch (fencing any
// older engine), attaches a loop device to it and runs the file system's
// read-only check, which must report it clean.
func fsckVolume(t *testing.T, volume string, size int64, epoch uint64, fsType string, replicas ...string) {
	t.Helper()
	ctx := context.Background()
	cfg := replication.EngineConfig{Volume: volume, Size: size, Epoch: epoch, Timeout: 5 * time.Second,
		Log: hclog.New(&hclog.LoggerOptions{Output: testWriter{t}, Level: hclog.Warn})}
	for _, r := range replicas {
		cfg.Replicas = append(cfg.Replicas, replication.ReplicaConfig{Addr: r})
	}
	eng, err := replication.StartEngine(ctx, cfg)
	must.NoError(t, err)
	defer eng.Close()
	fm, err := fuse.New(ctx, eng, fuse.Config{Dir: t.TempDir(), Name: volume, Log: cfg.Log})
	must.NoError(t, err)
	defer fm.Close()
	dev, err := mount.AttachLoop(fm.Path())
	must.NoError(t, err)
	defer func() { must.NoError(t, mount.DetachLoops(fm.Path())) }()

	var cmd *exec.Cmd
	if fsType == mount.FSXFS {
		cmd = exec.Command(sbin("xfs_repair"), "-n", dev)
	} else {
		cmd = exec.Command(sbin("e2fsck"), "-f", "-n", dev)
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		t.Fatalf("%s reports the file system not clean (exit %d):\n%s", strings.Join(cmd.Args, " "), ee.ExitCode(), out)
	}
	must.NoError(t, err)
	t.Logf("%s: clean", strings.Join(cmd.Args, " "))
}

func sbin(tool string) string {
	if p, err := exec.LookPath(tool); err == nil {
		return p
	}
	return "/usr/sbin/" + tool
}

// assertNodeClean fails if node n still has a mount or a loop device of
// the volume.
func assertNodeClean(t *testing.T, n node, volume string) {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	must.NoError(t, err)
	for _, p := range []string{n.mount, n.fuseDir} {
		must.StrNotContains(t, string(mi), " "+p+" ", must.Sprintf("%s is still mounted", p))
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		b, err := os.ReadFile(l)
		if err == nil {
			must.NotEq(t, n.backing(volume), strings.TrimSpace(string(b)), must.Sprintf("%s still bound", l))
		}
	}
}

// waitInOrder fails unless the process logged lines matching each pattern,
// one after another in the given order.
func (p *proc) waitInOrder(t *testing.T, patterns ...string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	i := 0
	for _, pat := range patterns {
		re := regexpMust(pat)
		for ; i < len(p.lines) && !re.MatchString(p.lines[i]); i++ {
		}
		if i == len(p.lines) {
			t.Fatalf("no log line matching %q after the previous step (want order %q)", pat, patterns)
		}
		i++
	}
}
