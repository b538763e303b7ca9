package cluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

// TestMountsUnderEscapedPath: a mount point with a space or a backslash
// (escaped in mountinfo as \040 and \134) is found under its directory
// with its real name, and a sibling whose name merely starts like the
// directory's is not under it.
func TestMountsUnderEscapedPath(t *testing.T) {
	dir := t.TempDir()
	odd := filepath.Join(dir, `a b\c`)
	sibling := dir + "x"
	must.NoError(t, os.MkdirAll(odd, 0o755))
	must.NoError(t, os.MkdirAll(sibling, 0o755))
	must.NoError(t, syscall.Mount("tmpfs", odd, "tmpfs", 0, ""))
	must.NoError(t, syscall.Mount("tmpfs", sibling, "tmpfs", 0, ""))
	t.Cleanup(func() {
		_ = syscall.Unmount(odd, syscall.MNT_DETACH)
		_ = syscall.Unmount(sibling, syscall.MNT_DETACH)
		_ = os.Remove(sibling)
	})
	mps, err := mountsUnder(dir)
	must.NoError(t, err)
	must.Eq(t, []string{odd}, mps)
	devs, err := mountDevsUnder(dir)
	must.NoError(t, err)
	must.MapLen(t, 1, devs)
}

// TestUnmountUnder mounts nested file systems (as a killed Nomad client
// or CSI plugin leaves them) and checks that teardown removes them all and
// nothing outside the directory.
func TestUnmountUnder(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	inner := filepath.Join(dir, "a", "b")
	must.NoError(t, os.MkdirAll(inner, 0o755))
	must.NoError(t, syscall.Mount("tmpfs", filepath.Join(dir, "a"), "tmpfs", 0, ""))
	must.NoError(t, os.MkdirAll(inner, 0o755))
	must.NoError(t, syscall.Mount("tmpfs", inner, "tmpfs", 0, ""))
	must.NoError(t, syscall.Mount("tmpfs", outside, "tmpfs", 0, ""))
	t.Cleanup(func() {
		_ = syscall.Unmount(inner, syscall.MNT_DETACH)
		_ = syscall.Unmount(filepath.Join(dir, "a"), syscall.MNT_DETACH)
		_ = syscall.Unmount(outside, syscall.MNT_DETACH)
	})
	mps, err := mountsUnder(dir)
	must.NoError(t, err)
	must.Eq(t, []string{inner, filepath.Join(dir, "a")}, mps, must.Sprint("deepest first"))

	must.NoError(t, unmountUnder(dir))
	mps, err = mountsUnder(dir)
	must.NoError(t, err)
	must.SliceEmpty(t, mps)
	mps, err = mountsUnder(outside)
	must.NoError(t, err)
	must.Len(t, 1, mps, must.Sprint("a mount outside the directory was touched"))
}

// TestProcRecordNeverSignalsAnotherProcess: a recorded PID whose command
// line is not the recorded one (the PID was reused) is left alone.
func TestProcRecordNeverSignalsAnotherProcess(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	must.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })

	other := ProcRecord{Name: "x", PID: cmd.Process.Pid, Cmdline: "nomad\x00agent"}
	must.False(t, other.alive())
	must.NoError(t, killRecorded(other, time.Second))
	select {
	case <-done:
		t.Fatal("a process with another command line was killed")
	case <-time.After(100 * time.Millisecond):
	}

	mine := ProcRecord{Name: "sleep", PID: cmd.Process.Pid, Cmdline: strings.Join(cmd.Args, "\x00")}
	must.True(t, mine.alive())
	// The test process reaps it (a zombie counts as gone).
	must.NoError(t, killRecorded(mine, 5*time.Second))
	<-done
	must.False(t, mine.alive())
}

// TestLoopOnLazilyUnmountedFileSystemDetached: a loop device whose backing
// file lives on a file system mounted under the cluster's directory (a
// node's FUSE file) is found and detached even after that file system
// was lazily unmounted, when its path no longer shows the directory.
func TestLoopOnLazilyUnmountedFileSystemDetached(t *testing.T) {
	dir := t.TempDir()
	m := filepath.Join(dir, "run")
	must.NoError(t, os.MkdirAll(m, 0o755))
	must.NoError(t, syscall.Mount("tmpfs", m, "tmpfs", 0, ""))
	t.Cleanup(func() { _ = syscall.Unmount(m, syscall.MNT_DETACH) })
	backing := filepath.Join(m, "vol")
	must.NoError(t, os.WriteFile(backing, make([]byte, 1<<20), 0o644))
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	must.NoError(t, err, must.Sprint(string(out)))
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })

	devs, err := mountDevsUnder(dir)
	must.NoError(t, err)
	must.MapContainsKey(t, ourLoops(dir, devs), dev)
	must.NoError(t, syscall.Unmount(m, syscall.MNT_DETACH))
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	must.NoError(t, err)
	must.StrNotContains(t, string(b), dir, must.Sprint("the kernel still shows the old path; the test would prove nothing"))

	must.NoError(t, detachLoops(dir, devs))
	must.NoError(t, waitLoopsGone(dir, devs))
	_, err = os.Stat(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	must.True(t, os.IsNotExist(err), must.Sprintf("%s still attached", dev))
}
