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

func TestUnescapeMount(t *testing.T) {
	must.Eq(t, "/a b/c\\d", unescapeMount(`/a\040b/c\134d`))
	must.Eq(t, "/plain", unescapeMount("/plain"))
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
