// Command capsrunc is the end-to-end harness's OCI runtime for dockerd
// on a host whose capability bounding set lacks some capabilities (this
// project's CI sandbox lacks CAP_SYS_RESOURCE). A privileged container
// asks for every capability, runc cannot grant one the host does not
// have, and the container fails to start ("unable to apply caps:
// operation not permitted"). capsrunc removes from the container's
// configuration the capabilities outside its own bounding set, then
// runs runc with the same arguments. The harness uses it only where the
// bounding set is not full (e2e/cluster/docker.go); on a normal host
// dockerd runs runc directly.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// capNames are the kernel's capabilities by number (linux/capability.h).
var capNames = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
	"CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
	"CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
	"CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "capsrunc:", err)
		os.Exit(1)
	}
}

func run() error {
	args := os.Args[1:]
	if i := slices.Index(args, "--bundle"); i >= 0 && i+1 < len(args) && slices.Contains(args, "create") {
		if err := filterCaps(filepath.Join(args[i+1], "config.json")); err != nil {
			return err
		}
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		return err
	}
	return syscall.Exec(runc, append([]string{"runc"}, args...), os.Environ())
}

// bounding returns the names of the capabilities in this process's
// bounding set.
func bounding() (map[string]bool, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil, err
			}
			have := map[string]bool{}
			for i, name := range capNames {
				if mask&(1<<i) != 0 {
					have[name] = true
				}
			}
			return have, nil
		}
	}
	return nil, fmt.Errorf("no CapBnd in /proc/self/status")
}

// filterCaps removes from an OCI config the capabilities outside the
// bounding set, keeping every other field as it is.
func filterCaps(path string) error {
	have, err := bounding()
	if err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		return err
	}
	proc, _ := cfg["process"].(map[string]any)
	caps, _ := proc["capabilities"].(map[string]any)
	for set, v := range caps {
		list, _ := v.([]any)
		kept := list[:0]
		for _, c := range list {
			if s, _ := c.(string); have[s] {
				kept = append(kept, c)
			}
		}
		caps[set] = kept
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o644)
}
