package testcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNoConsul means no Consul binary could be found or built.
var ErrNoConsul = errors.New("no consul binary")

// ErrNoNomad means no Nomad binary could be found or built.
var ErrNoNomad = errors.New("no nomad binary")

// ConsulBinary returns the path of the pinned Consul binary: from
// SADDLEBAG_CONSUL_BIN when that file exists, else by running
// e2e/tools/build.sh consul (which builds it once into a cache) from the
// enclosing module's root.
func ConsulBinary() (string, error) { return toolBinary("consul", "SADDLEBAG_CONSUL_BIN", ErrNoConsul) }

// NomadBinary is ConsulBinary for Nomad (SADDLEBAG_NOMAD_BIN, or
// e2e/tools/build.sh nomad: a cold build takes minutes).
func NomadBinary() (string, error) { return toolBinary("nomad", "SADDLEBAG_NOMAD_BIN", ErrNoNomad) }

func toolBinary(tool, env string, errNone error) (string, error) {
	if p := os.Getenv(env); p != "" {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	root, err := moduleRoot()
	if err != nil {
		return "", fmt.Errorf("%w: %w", errNone, err)
	}
	var out, stderr bytes.Buffer
	cmd := exec.Command("bash", filepath.Join(root, "e2e", "tools", "build.sh"), tool)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: e2e/tools/build.sh %s: %w: %s", errNone, tool, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// moduleRoot finds the directory holding e2e/tools/build.sh, walking up
// from the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 32 {
		if _, err := os.Stat(filepath.Join(dir, "e2e", "tools", "build.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("e2e/tools/build.sh not found above the working directory; set SADDLEBAG_CONSUL_BIN and SADDLEBAG_NOMAD_BIN")
}

// Agent is one Consul agent process on a loopback address.
//
// Its methods are safe for concurrent use.
type Agent struct {
	Name string
	// IP is the loopback address it binds (127.0.0.x).
	IP string
	// HTTPAddr is its HTTP API (host:port); SerfLANAddr its gossip port.
	HTTPAddr    string
	SerfLANAddr string
	Server      bool

	bin, logPath string
	args         []string
	wrap         []string // command prefix, e.g. nsenter --net=... --
	token        string
	detach       bool

	procOnce sync.Once
	proc     *Process // made by the first start, from the fields above
}

// process is the agent's Process, made on first use from its command.
func (a *Agent) process() *Process {
	a.procOnce.Do(func() {
		a.proc = NewProcess("consul agent "+a.Name, a.wrap, append([]string{a.bin}, a.args...), nil, a.logPath, a.detach)
	})
	return a.proc
}

// start launches the agent, appending to its log.
func (a *Agent) start() error { return a.process().Start() }

// PID returns the running process's id (0 when stopped).
func (a *Agent) PID() int { return a.process().PID() }

// Kill sends SIGKILL to the agent (by PID) and waits for it to exit.
func (a *Agent) Kill() { a.process().Kill() }

// Stop ends the agent gracefully (SIGTERM; SIGKILL after 10s).
func (a *Agent) Stop() { _ = a.process().Stop(syscall.SIGTERM, 10*time.Second) }

// Restart starts the agent again with the same addresses and ports (a dev
// agent comes back empty: it keeps nothing in memory across restarts).
func (a *Agent) Restart(ctx context.Context) error {
	if err := a.start(); err != nil {
		return err
	}
	return a.WaitReady(ctx)
}

// LogPath is the file the agent's output goes to.
func (a *Agent) LogPath() string { return a.logPath }

// Cmdline is the command line the agent runs with (Process.Cmdline).
func (a *Agent) Cmdline() string { return a.process().Cmdline() }

// LogTail returns the last n lines of the agent's log.
func (a *Agent) LogTail(n int) string { return a.process().LogTail(n) }

// WaitReady waits until the agent answers, a leader is elected and the
// agent's own node is registered with a passing serfHealth check.
func (a *Agent) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var last error
	for {
		if last = a.ready(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("consul agent %s not ready: %w; last error: %w; log tail:\n%s", a.Name, ctx.Err(), last, a.LogTail(20))
		case <-a.exited():
			return fmt.Errorf("consul agent %s exited; log tail:\n%s", a.Name, a.LogTail(40))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (a *Agent) exited() <-chan struct{} { return a.process().Exited() }

func (a *Agent) ready(ctx context.Context) error {
	var leader string
	if err := a.getJSON(ctx, "/v1/status/leader", &leader); err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader yet")
	}
	var checks []struct{ CheckID, Status string }
	if err := a.getJSON(ctx, "/v1/health/node/"+a.Name, &checks); err != nil {
		return err
	}
	for _, c := range checks {
		if c.CheckID == "serfHealth" && c.Status == "passing" {
			return nil
		}
	}
	return errors.New("node not yet registered with a passing serfHealth")
}

func (a *Agent) getJSON(ctx context.Context, path string, v any) error {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+a.HTTPAddr+path, nil)
	if err != nil {
		return err
	}
	if a.token != "" {
		req.Header.Set("X-Consul-Token", a.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s: %s", path, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// freePort returns a port free for both TCP and UDP on ip (Serf needs
// both on the same number).
func freePort(ip string) (int, error) {
	for range 50 {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, fmt.Sprint(port)))
		ln.Close()
		if err == nil {
			pc.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free tcp+udp port on %s", ip)
}
