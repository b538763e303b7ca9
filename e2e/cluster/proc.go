package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/saddlebag/saddlebag/internal/testcluster"
)

// Process is one agent process the harness started and waits for: the
// one implementation, internal/testcluster's.
type Process = testcluster.Process

// record is p's entry in the state file.
func record(p *Process) ProcRecord {
	return ProcRecord{Name: p.Name, PID: p.PID(), Cmdline: p.Cmdline()}
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
