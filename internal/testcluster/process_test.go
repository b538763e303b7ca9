package testcluster

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

// TestProcessStop: Stop reports whether the process ended of the signal
// within the grace (true) or had to be killed (false), and returns only
// once it is reaped; a process not running counts as exited.
func TestProcessStop(t *testing.T) {
	dir := t.TempDir()

	p := NewProcess("sleeper", nil, []string{"sleep", "30"}, nil, filepath.Join(dir, "sleeper.log"), false)
	must.True(t, p.Stop(syscall.SIGTERM, time.Second), must.Sprint("a process never started counts as exited"))
	must.NoError(t, p.Start())
	must.True(t, p.Stop(syscall.SIGTERM, 10*time.Second), must.Sprint("sleep exits on SIGTERM"))
	must.Zero(t, p.PID())
	must.True(t, p.Stop(syscall.SIGTERM, time.Second), must.Sprint("an exited process counts as exited"))

	// The shell ignores SIGTERM and execs sleep, which keeps ignoring it.
	deaf := NewProcess("deaf", nil, []string{"sh", "-c", `trap "" TERM; exec sleep 30`}, nil, filepath.Join(dir, "deaf.log"), false)
	must.NoError(t, deaf.Start())
	time.Sleep(200 * time.Millisecond) // let the trap be set
	start := time.Now()
	must.False(t, deaf.Stop(syscall.SIGTERM, 300*time.Millisecond), must.Sprint("a process ignoring SIGTERM had to be killed"))
	must.GreaterEq(t, 300*time.Millisecond, time.Since(start), must.Sprint("Stop waits out the grace"))
	select {
	case <-deaf.Exited():
	default:
		t.Fatal("Stop returned before the killed process was reaped")
	}
}
