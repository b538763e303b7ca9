package cluster

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/saddlebag/saddlebag/internal/testcluster"
)

// Node is one simulated node: a network namespace with its own address,
// Consul client agent, Nomad client and data directory.
type Node struct {
	Name  string // node1, node2, ...
	IP    string
	Netns string
	// Dir is the node's directory; DataDir its Saddlebag data directory
	// and NomadDataDir its Nomad client's data_dir (CSI plugin sockets
	// and staging paths live under NomadDataDir/client/csi).
	Dir, DataDir, NomadDataDir string

	Consul *testcluster.Agent
	Nomad  *Process
	Docker *Process // its dockerd, with Options.Docker

	c *Cluster
}

// wrap is the command prefix that runs a program as a process of this
// node. nsenter switches the network namespace only; `ip netns exec`
// would also give the program a mount namespace of its own with a fresh
// /sys, which hides the cgroup hierarchies from Nomad's exec driver and
// every mount a node makes (a CSI plugin's stage and publish) from the
// host. nsenter execs the program, so the PID started is the program's.
func (nd *Node) wrap() []string { return nsWrap(nd.Netns) }

// NodeID returns the node's Nomad node ID.
func (nd *Node) NodeID(ctx context.Context) (string, error) {
	api, err := nd.c.Nomad()
	if err != nil {
		return "", err
	}
	stubs, _, err := api.Nodes().List((&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return "", err
	}
	for _, s := range stubs {
		if s.Name == nd.Name {
			return s.ID, nil
		}
	}
	return "", fmt.Errorf("nomad node %s not registered", nd.Name)
}

// Kill SIGKILLs every process of the node at once: its Consul agent, its
// Nomad client, and every task that client started (Saddlebag among
// them), found by their network namespace. It returns the moment the
// signals went out, and returns only when all of them are gone.
func (nd *Node) Kill() (time.Time, error) {
	t0 := time.Now()
	err := killNetns(nd.Netns, 10*time.Second)
	// Reap the two we started (they are dead already).
	nd.Consul.Kill()
	nd.Nomad.Kill()
	if nd.Docker != nil {
		nd.Docker.Kill()
	}
	return t0, err
}

// Restart starts the node's Consul agent and Nomad client again (after
// Kill) and waits until Nomad has the node ready.
func (nd *Node) Restart(ctx context.Context) error {
	if err := nd.Consul.Restart(ctx); err != nil {
		return err
	}
	if nd.Docker != nil {
		if err := nd.startDockerd(ctx); err != nil {
			return err
		}
	}
	if err := nd.c.startRecorded(nd.Nomad); err != nil {
		return err
	}
	nd.c.mu.Lock()
	cp := nd.c.state
	cp.Procs = append(cp.Procs, ProcRecord{Name: "consul-" + nd.Consul.Name, PID: nd.Consul.PID(), Cmdline: nd.Consul.Cmdline()})
	err := cp.save()
	nd.c.mu.Unlock()
	if err != nil {
		return err
	}
	return nd.c.WaitNodesReady(ctx, nd)
}

// Partition drops all traffic between the node and everything else
// (servers, other nodes, this process) while its processes keep running.
func (nd *Node) Partition(ctx context.Context) error { return partitionNetns(ctx, nd.Netns) }

// Heal removes the partition.
func (nd *Node) Heal(ctx context.Context) error { return healNetns(ctx, nd.Netns) }

// FilterRules lists the iptables rules in the node's namespace (empty
// when it is not partitioned).
func (nd *Node) FilterRules(ctx context.Context) ([]string, error) { return filterRules(ctx, nd.Netns) }

// PIDs lists the processes running in the node's namespace.
func (nd *Node) PIDs() ([]int, error) { return netnsPIDs(nd.Netns) }

// Exec runs a command inside the node's network namespace (as a process
// of that node would run it) and returns its combined output.
func (nd *Node) Exec(ctx context.Context, argv ...string) (string, error) {
	return run(ctx, append(nd.wrap(), argv...)...)
}

// ErrNotDown is returned by WaitNodeStatus when the node did not reach
// the wanted status in time.
var ErrNotDown = errors.New("node did not reach status")

// WaitNodeStatus polls Nomad (every 50ms) until the node's status is
// want, and returns the moment it first saw it.
func (nd *Node) WaitNodeStatus(ctx context.Context, id, want string) (time.Time, error) {
	api, err := nd.c.Nomad()
	if err != nil {
		return time.Time{}, err
	}
	var last string
	for {
		n, _, err := api.Nodes().Info(id, (&nomadapi.QueryOptions{}).WithContext(ctx))
		if err == nil {
			if last = n.Status; n.Status == want {
				return time.Now(), nil
			}
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%w %q: %s is %q: %w", ErrNotDown, want, nd.Name, last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// RestartNomad restarts the node's Nomad client agent alone, as
// `systemctl restart nomad` would: SIGTERM (a client leaves its tasks
// running), start it again, and wait until Nomad has the node ready.
// It returns when the old agent had exited.
func (nd *Node) RestartNomad(ctx context.Context) (time.Time, error) {
	if !nd.Nomad.Stop(syscall.SIGTERM, 30*time.Second) {
		nd.c.logf("nomad client on %s did not exit on SIGTERM within 30s: killed", nd.Name)
	}
	stopped := time.Now()
	if err := nd.c.startRecorded(nd.Nomad); err != nil {
		return stopped, err
	}
	return stopped, nd.c.WaitNodesReady(ctx, nd)
}
