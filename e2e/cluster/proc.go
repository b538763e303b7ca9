package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is one agent process the harness started and waits for.
//
// Its methods are safe for concurrent use.
type Process struct {
	Name    string
	argv    []string // after any wrapper: what /proc/PID/cmdline shows
	wrap    []string
	env     []string
	logPath string
	detach  bool

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func newProcess(name string, wrap, argv, env []string, logPath string, detach bool) *Process {
	return &Process{Name: name, argv: argv, wrap: wrap, env: env, logPath: logPath, detach: detach}
}

// start launches the process, appending its output to its log.
func (p *Process) start() error {
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
		cmd.Wait()
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

// Exited is closed when the process has exited (nil before the first start).
func (p *Process) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Kill sends SIGKILL (by PID) and waits for the process to be reaped.
func (p *Process) Kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// LogTail returns the last n lines of the process's log.
func (p *Process) LogTail(n int) string { return logTail(p.logPath, n) }

func (p *Process) record() ProcRecord {
	return ProcRecord{Name: p.Name, PID: p.PID(), Cmdline: strings.Join(p.argv, "\x00")}
}

func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// agentEnv is this process's environment without what would make an
// agent or CLI reach somewhere else: AWS_CA_BUNDLE (Nomad's AWS
// fingerprinter fails on it and then probes a metadata address,
// docs/architecture.md, "What we measured about Nomad") and any NOMAD_*/CONSUL_* settings aimed at another cluster.
func agentEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "AWS_CA_BUNDLE" || strings.HasPrefix(k, "NOMAD_") || strings.HasPrefix(k, "CONSUL_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// ProcRecord identifies a started process in the state file.
type ProcRecord struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// Cmdline is /proc/PID/cmdline as it was when started (NUL-separated,
	// no trailing NUL): a PID whose command line differs is someone
	// else's and is never signalled.
	Cmdline string `json:"cmdline"`
}

// alive reports whether r's process still runs the recorded command (a
// zombie does not count).
func (r ProcRecord) alive() bool {
	if r.PID <= 0 {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(r.PID), "cmdline"))
	if err != nil || len(b) == 0 {
		return false
	}
	return strings.TrimRight(string(b), "\x00") == r.Cmdline
}

// killRecorded SIGKILLs r's process if it is still the recorded one, and
// waits up to timeout for it to go.
func killRecorded(r ProcRecord, timeout time.Duration) error {
	if !r.alive() {
		return nil
	}
	if err := syscall.Kill(r.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s (pid %d): %w", r.Name, r.PID, err)
	}
	deadline := time.Now().Add(timeout)
	for r.alive() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (pid %d) still running %s after SIGKILL", r.Name, r.PID, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// procStartTime returns field 22 of /proc/PID/stat (start time in clock
// ticks since boot), which with the PID identifies a process for good.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields restart after ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Stop sends SIGTERM (by PID) and waits up to timeout for the process
// to exit, then SIGKILLs it; it reports whether it exited on SIGTERM.
func (p *Process) Stop(timeout time.Duration) bool {
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
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return true
	case <-time.After(timeout):
	}
	p.Kill()
	return false
}
