package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// maxInstances bounds the instance numbers (and so subnets) tried.
const maxInstances = 250

// names of instance n's network objects. Interface names stay within
// Linux's 15 characters.
func bridgeName(n int) string         { return fmt.Sprintf("sbe2e%d", n) }
func netnsName(n, node int) string    { return fmt.Sprintf("sbe2e%d-node%d", n, node) }
func vethName(n, node int) string     { return fmt.Sprintf("sbe2e%dn%d", n, node) }
func subnetIP(n, host int) string     { return fmt.Sprintf("198.18.%d.%d", n, host) }
func cgroupParent(n, node int) string { return fmt.Sprintf("sbe2e%d-node%d", n, node) }
func serverNetnsName(n int) string    { return fmt.Sprintf("sbe2e%d-srv", n) }
func serverVethName(n int) string     { return fmt.Sprintf("sbe2e%ds", n) }

// Host numbers in instance n's subnet: the servers' namespace has .1,
// node i has .(i+1), and the bridge in the root namespace has .254, the
// address this process (the test, a browser) reaches them all from.
const (
	serverHost = 1
	bridgeHost = 254
)

// nodeIface is the node's interface inside its namespace.
const nodeIface = "eth0"

// run runs a command and returns its combined output, with the output in
// the error when it fails.
func run(ctx context.Context, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = agentEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// claimBridge creates instance n's bridge; creating it is what claims n,
// so two harnesses never share an instance. Bridged frames skip the root
// namespace's iptables (nf_call_iptables 0) so a host firewall, such as a
// Docker host's FORWARD policy, cannot drop node-to-node traffic.
func claimBridge(ctx context.Context, n int) error {
	_, err := run(ctx, "ip", "link", "add", bridgeName(n), "type", "bridge",
		"nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0")
	return err
}

func linkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

// setUpBridge gives the claimed bridge the root namespace's address in
// the subnet, .254: nothing binds it; it only routes this process's
// connections to the servers and nodes, which all live in namespaces the
// harness made.
func setUpBridge(ctx context.Context, n int) error {
	br := bridgeName(n)
	if _, err := run(ctx, "ip", "addr", "add", subnetIP(n, bridgeHost)+"/24", "dev", br); err != nil {
		return err
	}
	_, err := run(ctx, "ip", "link", "set", br, "up")
	return err
}

// addNodeNetns creates node i's namespace, joined to the bridge by a veth
// pair, with address 198.18.n.(i+1) on its eth0 and loopback up.
func addNodeNetns(ctx context.Context, n, i int) error {
	return addNetns(ctx, n, netnsName(n, i), vethName(n, i), subnetIP(n, i+1))
}

// addServerNetns creates the servers' namespace the same way, with
// address 198.18.n.1.
func addServerNetns(ctx context.Context, n int) error {
	return addNetns(ctx, n, serverNetnsName(n), serverVethName(n), subnetIP(n, serverHost))
}

// addNetns creates namespace ns joined to instance n's bridge by a veth
// pair (veth on the bridge, eth0 inside), with ip on eth0 and loopback up.
func addNetns(ctx context.Context, n int, ns, veth, ip string) error {
	// The kernel destroys a deleted namespace's veth pairs
	// asynchronously, so a previous holder of instance n may still have
	// this one; n is ours (we made its bridge), and so is the name.
	if err := deleteLink(ctx, veth); err != nil {
		return err
	}
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", veth, "type", "veth", "peer", "name", nodeIface, "netns", ns},
		{"ip", "link", "set", veth, "master", bridgeName(n)},
		{"ip", "link", "set", veth, "up"},
		{"ip", "-n", ns, "addr", "add", ip + "/24", "dev", nodeIface},
		{"ip", "-n", ns, "link", "set", nodeIface, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if _, err := run(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// netnsInode returns the inode of a named namespace, which is what
// /proc/PID/ns/net of its processes links to ("net:[INODE]").
func netnsInode(ns string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/run/netns", ns), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// netnsPIDs lists the processes in namespace ns (zombies have none).
func netnsPIDs(ns string) ([]int, error) {
	ino, err := netnsInode(ns)
	if err != nil {
		return nil, err
	}
	want := fmt.Sprintf("net:[%d]", ino)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if l, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "net")); err == nil && l == want {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// killNetns SIGKILLs every process in namespace ns, again and again until
// none is left (a process may fork while the others die), for up to
// timeout. Every process there descends from one the harness started.
func killNetns(ns string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids, err := netnsPIDs(ns)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("namespace %s: processes %v survive SIGKILL", ns, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// partitionRules are the two rules that cut a node off: everything in and
// out of its only link to the others is dropped. They live in the node's
// own namespace.
var partitionRules = [][]string{
	{"INPUT", "-i", nodeIface, "-j", "DROP"},
	{"OUTPUT", "-o", nodeIface, "-j", "DROP"},
}

// nsWrap is the command prefix that runs a program in namespace ns (and
// nothing else of it: the mount namespace stays the host's).
func nsWrap(ns string) []string {
	return []string{"nsenter", "--net=" + filepath.Join("/run/netns", ns), "--"}
}

func iptables(ctx context.Context, ns string, args ...string) (string, error) {
	return run(ctx, append(append(nsWrap(ns), "iptables", "-w", "5"), args...)...)
}

// partitionNetns drops all of ns's traffic to and from the others.
// Idempotent.
func partitionNetns(ctx context.Context, ns string) error {
	for _, r := range partitionRules {
		if _, err := iptables(ctx, ns, append([]string{"-C"}, r...)...); err == nil {
			continue
		}
		if _, err := iptables(ctx, ns, append([]string{"-A"}, r...)...); err != nil {
			return fmt.Errorf("partition %s: %w", ns, err)
		}
	}
	return nil
}

// healNetns deletes the partition rules (every copy). Idempotent.
func healNetns(ctx context.Context, ns string) error {
	for _, r := range partitionRules {
		for {
			if _, err := iptables(ctx, ns, append([]string{"-C"}, r...)...); err != nil {
				break // gone
			}
			if _, err := iptables(ctx, ns, append([]string{"-D"}, r...)...); err != nil {
				return fmt.Errorf("heal %s: %w", ns, err)
			}
		}
	}
	return nil
}

// filterRules lists the rules in ns's filter table, without the chain
// policies: empty means nothing drops the node's traffic.
func filterRules(ctx context.Context, ns string) ([]string, error) {
	out, err := iptables(ctx, ns, "-S")
	if err != nil {
		return nil, err
	}
	var rules []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "-P ") && !strings.HasPrefix(l, "#") {
			rules = append(rules, l)
		}
	}
	return rules, nil
}

// deleteNetns removes a namespace (and so its end of the veth pair, which
// takes the bridge port with it). Absent is fine.
func deleteNetns(ctx context.Context, ns string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", ns)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	_, err := run(ctx, "ip", "netns", "del", ns)
	return err
}

// deleteLink removes a link; absent is fine.
func deleteLink(ctx context.Context, name string) error {
	if !linkExists(name) {
		return nil
	}
	_, err := run(ctx, "ip", "link", "del", name)
	return err
}
