package testcluster

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is one process a harness starts, waits for and ends by its PID:
// a Consul agent here, a Nomad agent in e2e/cluster. Its output is
// appended to a log file. It may be started again once it has exited.
//
// Its methods are safe for concurrent use.
type Process struct {
	Name    string
	argv    []string // after any wrapper: what /proc/PID/cmdline shows
	wrap    []string // command prefix, e.g. nsenter --net=... --
	env     []string // nil: this process's environment
	logPath string
	detach  bool // own session, so it outlives the harness (make dev)

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// NewProcess describes a process that runs wrap followed by argv (the
// wrapper execs argv, as nsenter does, so the PID started is argv's),
// with env (nil: inherited), its output appended to logPath, and in a
// session of its own when detach is set. Start starts it.
func NewProcess(name string, wrap, argv, env []string, logPath string, detach bool) *Process {
	return &Process{Name: name, argv: argv, wrap: wrap, env: env, logPath: logPath, detach: detach}
}

// Start launches the process, appending its output to its log. It fails
// while the process is still running.
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s is already running (pid %d)", p.Name, p.cmd.Process.Pid)
		}
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	full := append(append([]string{}, p.wrap...), p.argv...)
	cmd := exec.Command(full[0], full[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = p.env
	if p.detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// PID returns the running process's id (0 when it is not running).
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	select {
	case <-p.done:
		return 0
	default:
		return p.cmd.Process.Pid
	}
}

// Exited is closed when the process has exited (nil before the first
// start).
func (p *Process) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Kill sends SIGKILL (by PID) and waits for the process to be reaped.
func (p *Process) Kill() { _ = p.Stop(syscall.SIGKILL, 0) }

// Stop sends sig (by PID); when grace is positive and the process has not
// exited within it, SIGKILL. It returns once the process is reaped, and
// reports whether it exited of sig, within grace: false only when it had
// to be killed. A process not running counts as exited.
func (p *Process) Stop(sig syscall.Signal, grace time.Duration) bool {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
	}
	_ = cmd.Process.Signal(sig)
	if grace > 0 {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-done:
			return true
		case <-t.C:
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
			return false
		}
	}
	<-done
	return true
}

// LogPath is the file the process's output goes to.
func (p *Process) LogPath() string { return p.logPath }

// Cmdline is the command line the process runs with (after any wrapper
// has exec'd it), NUL-separated as /proc/PID/cmdline shows it: a later
// process can check that a recorded PID is still this one.
func (p *Process) Cmdline() string { return strings.Join(p.argv, "\x00") }

// LogTail returns the last n lines of the process's log.
func (p *Process) LogTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
