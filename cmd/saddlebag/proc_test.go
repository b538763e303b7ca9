package main

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

// saddlebagBin is the saddlebag binary built once for these tests.
var saddlebagBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "saddlebag-bin-")
	if err != nil {
		panic(err)
	}
	saddlebagBin = filepath.Join(dir, "saddlebag")
	build := exec.Command("go", "build", "-o", saddlebagBin, ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		panic("build saddlebag: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a saddlebag process started by a test. Its stderr goes to the
// test log; Cleanup stops it (SIGTERM, then SIGKILL) by PID.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}

	mu    sync.Mutex
	lines []string
	seen  *sync.Cond
}

func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(saddlebagBin, args...), done: make(chan struct{})}
	p.seen = sync.NewCond(&p.mu)
	stderr, err := p.cmd.StderrPipe()
	must.NoError(t, err)
	must.NoError(t, p.cmd.Start())
	go func() {
		s := bufio.NewScanner(stderr)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, s.Text())
			p.seen.Broadcast()
			p.mu.Unlock()
		}
		p.cmd.Wait()
		close(p.done)
		p.mu.Lock()
		p.seen.Broadcast()
		p.mu.Unlock()
	}()
	t.Cleanup(func() {
		p.stop()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, l := range p.lines {
			t.Logf("%s[%d]: %s", args[0], p.cmd.Process.Pid, l)
		}
	})
	return p
}

// stop ends the process: SIGTERM, and SIGKILL if it has not exited in 10s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// waitLine waits until a stderr line matches re and returns its submatches.
func (p *proc) waitLine(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stopWake := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		p.seen.Broadcast()
		p.mu.Unlock()
	})
	defer stopWake()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := 0; ; i++ {
		for ; i < len(p.lines); i++ {
			if m := re.FindStringSubmatch(p.lines[i]); m != nil {
				return m
			}
		}
		select {
		case <-p.done:
			t.Fatalf("process exited before logging %q", re)
		default:
		}
		if ctx.Err() != nil {
			t.Fatalf("no log line matching %q within %s", re, timeout)
		}
		p.seen.Wait()
		i--
	}
}

var (
	replicaAddrRE = regexp.MustCompile(`serving replicas: .*addr=(\S+)`)
	insecureRE    = regexp.MustCompile(`\[WARN\] .*!!! INSECURE MODE \(--insecure, dev only\)`)
)

// startReplica runs `saddlebag replica` on a loopback port and returns it
// with its address.
func startReplica(t *testing.T, dataDir string) (*proc, string) {
	t.Helper()
	p := startProc(t, "replica", "--insecure", "--data-dir", dataDir, "--listen", "127.0.0.1:0")
	p.waitLine(t, insecureRE, 10*time.Second) // said loudly, at every start
	return p, p.waitLine(t, replicaAddrRE, 10*time.Second)[1]
}

var nbdReadyRE = regexp.MustCompile(`serving volume over nbd`)

// startEngine runs `saddlebag engine` for volume over replicas and waits
// until it serves NBD on the returned socket.
func startEngine(t *testing.T, volume, size string, epoch string, replicas ...string) (*proc, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	args := []string{"engine", "--insecure", "--volume", volume, "--size", size, "--epoch", epoch, "--nbd-socket", sock}
	for _, r := range replicas {
		args = append(args, "--replica", r)
	}
	p := startProc(t, args...)
	p.waitLine(t, nbdReadyRE, 20*time.Second)
	return p, sock
}

func nbdURI(sock string) string { return "nbd+unix:///?socket=" + sock }

// requireTool fails (not skips) when a tool the project installs is absent.
func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found: run `make deps` (installs libnbd-bin and the other test tools)", name)
	}
}

func regexpMust(s string) *regexp.Regexp { return regexp.MustCompile(s) }

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
