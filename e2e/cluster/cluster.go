package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/saddlebag/saddlebag/internal/procstat"
	"github.com/saddlebag/saddlebag/internal/testcluster"
)

// Options configures Start.
type Options struct {
	// Dir holds every data directory and log. Empty: the harness makes
	// /var/tmp/saddlebag-e2e/<instance> and removes it at teardown. It
	// must be traversable by other users (Nomad's exec tasks run as
	// nobody); Start makes it 0755.
	Dir string
	// Nodes is the number of simulated nodes (default 3).
	Nodes int
	// Timing is the Nomad server's failure-detection settings (zero
	// fields: DefaultTiming).
	Timing Timing
	// ConsulDefaultGossip runs Consul with its own gossip and Raft
	// timing instead of the harness's fast failure detection (to
	// measure failover on defaults).
	ConsulDefaultGossip bool
	// Detach starts every process in its own session and records no
	// owner, so the cluster outlives the process that started it until
	// an explicit Destroy (the demo cluster).
	Detach bool
	// ConsulUI serves Consul's web UI on the server's HTTP address (/ui).
	ConsulUI bool
	// Docker runs a dockerd in every node's namespace and enables Nomad's
	// docker driver there (privileged containers and host volumes
	// allowed), for the docker form of the jobs (docker.go).
	Docker bool
	// Logf receives progress lines (default: discarded).
	Logf func(format string, args ...any)
}

// Cluster is a running instance.
type Cluster struct {
	Instance int
	Dir      string
	// NomadAddr and ConsulAddr are the servers' HTTP addresses (host:port),
	// in the namespace ServerNetns.
	NomadAddr, ConsulAddr string
	ServerNetns           string
	NomadBin, ConsulBin   string

	Consul      *testcluster.Cluster
	NomadServer *Process
	Nodes       []*Node

	logf   func(string, ...any)
	mu     sync.Mutex // guards state and tokens
	state  *State
	tokens map[string]string // SaddlebagTokens
}

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

// Start brings an instance up: network, Consul server and clients, Nomad
// server and clients, and waits until every Nomad client is ready with
// raw_exec and exec healthy. On failure it tears down what it made.
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Nodes > 200 {
		return nil, fmt.Errorf("%d nodes: at most 200", o.Nodes)
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	timing := o.Timing.withDefaults()
	consulBin, err := testcluster.ConsulBinary()
	if err != nil {
		return nil, err
	}
	nomadBin, err := testcluster.NomadBinary()
	if err != nil {
		return nil, err
	}
	for _, tool := range []string{"ip", "iptables", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (run scripts/install-deps.sh): %w", tool, err)
		}
	}
	reapOrphans(ctx, o.Logf)

	n, err := claimInstance(ctx)
	if err != nil {
		return nil, err
	}
	st := &State{Instance: n, Bridge: bridgeName(n)}
	if !o.Detach {
		st.OwnerPID = os.Getpid()
		own, err := procstat.Read(st.OwnerPID)
		if err != nil {
			return nil, err
		}
		st.OwnerStart = own.StartTime
	}
	c = &Cluster{Instance: n, NomadBin: nomadBin, ConsulBin: consulBin, logf: o.Logf, state: st}
	defer func() {
		if err != nil {
			if derr := c.Destroy(context.WithoutCancel(ctx)); derr != nil {
				err = fmt.Errorf("%w (and teardown: %v)", err, derr)
			}
			c = nil
		}
	}()
	if o.Dir == "" {
		st.Dir, st.RemoveDir = filepath.Join("/var/tmp/saddlebag-e2e", strconv.Itoa(n)), true
		_ = os.RemoveAll(st.Dir) // a leftover from an instance n long gone
	} else if st.Dir, err = filepath.Abs(o.Dir); err != nil {
		return c, err
	}
	c.Dir = st.Dir
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return c, err
	}
	if err := os.Chmod(c.Dir, 0o755); err != nil {
		return c, err
	}
	if err := st.save(); err != nil {
		return c, err
	}

	o.Logf("e2e cluster %d: network 198.18.%d.0/24 on bridge %s, dir %s", n, n, st.Bridge, c.Dir)
	if err := setUpBridge(ctx, n); err != nil {
		return c, err
	}
	c.ServerNetns = serverNetnsName(n)
	st.ServerNamespace = c.ServerNetns
	if err := st.save(); err != nil {
		return c, err
	}
	if err := addServerNetns(ctx, n); err != nil {
		return c, err
	}
	serverIP := subnetIP(n, serverHost)
	layout := testcluster.Layout{ServerIP: serverIP, ServerWrap: nsWrap(c.ServerNetns)}
	for i := 1; i <= o.Nodes; i++ {
		node := &Node{Name: fmt.Sprintf("node%d", i), IP: subnetIP(n, i+1), Netns: netnsName(n, i), c: c}
		node.Dir = filepath.Join(c.Dir, node.Name)
		node.DataDir = filepath.Join(node.Dir, "saddlebag")
		node.NomadDataDir = filepath.Join(node.Dir, "nomad")
		st.Namespaces = append(st.Namespaces, node.Netns)
		st.Cgroups = append(st.Cgroups, cgroupParent(n, i))
		if err := st.save(); err != nil {
			return c, err
		}
		if err := addNodeNetns(ctx, n, i); err != nil {
			return c, err
		}
		for _, d := range []string{node.DataDir, node.NomadDataDir} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return c, err
			}
		}
		c.Nodes = append(c.Nodes, node)
		layout.Clients = append(layout.Clients, testcluster.ClientSpec{
			Name: node.Name, IP: node.IP, Wrap: node.wrap(), DefaultPorts: true, LocalHTTP: true,
		})
	}

	o.Logf("e2e cluster %d: starting consul", n)
	consulDir := filepath.Join(c.Dir, "consul")
	if err := os.MkdirAll(consulDir, 0o755); err != nil {
		return c, err
	}
	copts := testcluster.Options{Dir: consulDir, Binary: consulBin, Detach: o.Detach, HCL: consulACLHCL, Token: ConsulManagementToken,
		DefaultGossip: o.ConsulDefaultGossip}
	if o.ConsulUI {
		copts.HCL += "\nui_config { enabled = true }"
	}
	c.Consul, err = testcluster.StartLayout(ctx, layout, copts)
	// StartLayout stops what it started when it fails; until then the
	// namespaces' processes are killed by Destroy all the same.
	if err != nil {
		return c, err
	}
	c.ConsulAddr = c.Consul.Server.HTTPAddr
	for i, node := range c.Nodes {
		node.Consul = c.Consul.Clients[i]
	}
	c.recordConsul()
	if err := st.save(); err != nil {
		return c, err
	}

	o.Logf("e2e cluster %d: starting nomad", n)
	c.NomadAddr = net.JoinHostPort(serverIP, "4646")
	serverDir := filepath.Join(c.Dir, "nomad-server")
	if err := os.MkdirAll(serverDir, 0o755); err != nil {
		return c, err
	}
	cfg := filepath.Join(serverDir, "server.hcl")
	if err := os.WriteFile(cfg, []byte(nomadServerHCL(serverIP, filepath.Join(serverDir, "data"), c.ConsulAddr, timing)), 0o644); err != nil {
		return c, err
	}
	c.NomadServer = testcluster.NewProcess("nomad-server", nsWrap(c.ServerNetns), []string{nomadBin, "agent", "-config", cfg},
		agentEnv(), filepath.Join(serverDir, "nomad.log"), o.Detach)
	if err := c.startRecorded(c.NomadServer); err != nil {
		return c, err
	}
	// Clients that register before the server has its keyring get an
	// error and retry only after a backoff of up to half a minute.
	if err := c.waitServerReady(ctx); err != nil {
		return c, err
	}
	if o.Docker {
		if _, err := exec.LookPath("dockerd"); err != nil {
			return c, fmt.Errorf("dockerd not found (run scripts/install-deps.sh): %w", err)
		}
		if err := makeShared(ctx, c.Dir); err != nil {
			return c, err
		}
		runtime, err := c.capsRuntime(ctx)
		if err != nil {
			return c, err
		}
		for i, node := range c.Nodes {
			node.Docker = node.newDockerd(cgroupParent(n, i+1), runtime, o.Detach)
			if err := node.startDockerd(ctx); err != nil {
				return c, err
			}
		}
	}
	for i, node := range c.Nodes {
		cfg := filepath.Join(node.Dir, "nomad-client.hcl")
		hcl := nomadClientHCL(node.Name, node.IP, node.NomadDataDir, net.JoinHostPort(serverIP, "4647"),
			node.Consul.HTTPAddr, cgroupParent(n, i+1), node.DockerHost())
		if err := os.WriteFile(cfg, []byte(hcl), 0o644); err != nil {
			return c, err
		}
		node.Nomad = testcluster.NewProcess(node.Name+"-nomad", node.wrap(), []string{nomadBin, "agent", "-config", cfg},
			agentEnv(), filepath.Join(node.Dir, "nomad.log"), o.Detach)
		if err := c.startRecorded(node.Nomad); err != nil {
			return c, err
		}
	}
	st.NomadAddr, st.ConsulAddr = c.NomadAddr, c.ConsulAddr
	if err := st.save(); err != nil {
		return c, err
	}
	if err := c.WaitNodesReady(ctx, c.Nodes...); err != nil {
		return c, err
	}
	o.Logf("e2e cluster %d: ready: nomad http://%s, consul http://%s", n, c.NomadAddr, c.ConsulAddr)
	return c, nil
}

// claimInstance claims the first free instance number by creating its
// bridge.
func claimInstance(ctx context.Context) (int, error) {
	var last error
	for n := 1; n <= maxInstances; n++ {
		if linkExists(bridgeName(n)) {
			continue
		}
		if _, err := os.Stat(StatePath(n)); err == nil {
			continue // being torn down, or a demo cluster's
		}
		if last = claimBridge(ctx, n); last == nil {
			return n, nil
		}
	}
	return 0, fmt.Errorf("no free e2e cluster instance (1..%d): %w", maxInstances, last)
}

// wrap is the command prefix that runs a program as a process of this
// node. nsenter switches the network namespace only; `ip netns exec`
// would also give the program a mount namespace of its own with a fresh
// /sys, which hides the cgroup hierarchies from Nomad's exec driver and
// every mount a node makes (a CSI plugin's stage and publish) from the
// host. nsenter execs the program, so the PID started is the program's.
func (nd *Node) wrap() []string { return nsWrap(nd.Netns) }

// startRecorded starts p and records its PID in the state file.
func (c *Cluster) startRecorded(p *Process) error {
	if err := p.Start(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state.Procs = append(c.state.Procs, record(p))
	return c.state.save()
}

// recordConsul records the Consul agents' PIDs.
func (c *Cluster) recordConsul() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range append([]*testcluster.Agent{c.Consul.Server}, c.Consul.Clients...) {
		c.state.Procs = append(c.state.Procs, ProcRecord{Name: "consul-" + a.Name, PID: a.PID(), Cmdline: a.Cmdline()})
	}
}

// Destroy tears the instance down (see State.Destroy); it reaps the
// processes this process started so that none is left a zombie.
func (c *Cluster) Destroy(ctx context.Context) error {
	c.mu.Lock()
	st := c.state
	c.mu.Unlock()
	err := st.Destroy(ctx)
	// Every process is dead by now (or Destroy said why not); reap ours.
	var wg sync.WaitGroup
	for _, nd := range c.Nodes {
		if nd.Nomad != nil {
			wg.Go(nd.Nomad.Kill)
		}
	}
	if c.NomadServer != nil {
		wg.Go(c.NomadServer.Kill)
	}
	if c.Consul != nil {
		wg.Go(func() {
			for _, a := range c.Consul.Clients {
				a.Kill()
			}
			if c.Consul.Server != nil {
				c.Consul.Server.Kill()
			}
		})
	}
	wg.Wait()
	return err
}

// Nomad returns an API client for the Nomad server.
func (c *Cluster) Nomad() (*nomadapi.Client, error) {
	return nomadapi.NewClient(&nomadapi.Config{Address: "http://" + c.NomadAddr})
}

// ConsulManagementToken is the clusters' Consul bootstrap token: the
// harness, the Consul agents and Nomad use it. Saddlebag's jobs get
// tokens of the policies in jobs/acl (DeploySaddlebag). A fixed value,
// for a test or demo cluster on one machine only.
const ConsulManagementToken = "5addb1e9-e2e0-4000-8000-000000000001"

// consulACLHCL turns Consul's ACLs on in default-deny mode, as in
// production.
const consulACLHCL = `acl {
  enabled        = true
  default_policy = "deny"
  down_policy    = "extend-cache"
  tokens {
    initial_management = "` + ConsulManagementToken + `"
    agent              = "` + ConsulManagementToken + `"
  }
}
`

// ConsulClient returns an API client for the Consul server, with the
// management token.
func (c *Cluster) ConsulClient() (*consulapi.Client, error) {
	return consulapi.NewClient(&consulapi.Config{Address: c.ConsulAddr, Token: ConsulManagementToken})
}

// Env is what a user's shell needs to drive this cluster with the nomad
// and consul CLIs.
func (c *Cluster) Env() []string {
	return []string{"NOMAD_ADDR=http://" + c.NomadAddr, "CONSUL_HTTP_ADDR=http://" + c.ConsulAddr,
		"CONSUL_HTTP_TOKEN=" + ConsulManagementToken}
}

// NomadCLI runs the nomad CLI against the cluster, as a user would, and
// returns its combined output.
func (c *Cluster) NomadCLI(ctx context.Context, args ...string) (string, error) {
	return c.cli(ctx, c.NomadBin, args...)
}

// ConsulCLI runs the consul CLI against the cluster.
func (c *Cluster) ConsulCLI(ctx context.Context, args ...string) (string, error) {
	return c.cli(ctx, c.ConsulBin, args...)
}

func (c *Cluster) cli(ctx context.Context, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = agentEnv(c.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %v: %w: %s", filepath.Base(bin), args, err, out)
	}
	return string(out), nil
}

// waitServerReady waits until the Nomad server is leader and has an
// active root key (it signs node identities with it at registration).
func (c *Cluster) waitServerReady(ctx context.Context) error {
	api, err := c.Nomad()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var last error
	for {
		if last = serverReady(ctx, api); last == nil {
			return nil
		}
		select {
		case <-c.NomadServer.Exited():
			return fmt.Errorf("nomad server exited; log tail:\n%s", c.NomadServer.LogTail(30))
		case <-ctx.Done():
			return fmt.Errorf("nomad server not ready: %w; last: %w", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func serverReady(ctx context.Context, api *nomadapi.Client) error {
	leader, err := api.Status().Leader()
	if err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader yet")
	}
	keys, _, err := api.Keyring().List((&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k.State == nomadapi.RootKeyStateActive {
			return nil
		}
	}
	return errors.New("no active root key yet")
}

// WaitNodesReady waits until each node's Nomad client is registered,
// ready, and has raw_exec and exec detected and healthy.
func (c *Cluster) WaitNodesReady(ctx context.Context, nodes ...*Node) error {
	api, err := c.Nomad()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last error
	for {
		if last = c.nodesReady(ctx, api, nodes); last == nil {
			return nil
		}
		for _, nd := range nodes {
			select {
			case <-nd.Nomad.Exited():
				return fmt.Errorf("nomad client %s exited; log tail:\n%s", nd.Name, nd.Nomad.LogTail(30))
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nomad clients not ready: %w; last: %w", ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (c *Cluster) nodesReady(ctx context.Context, api *nomadapi.Client, nodes []*Node) error {
	stubs, _, err := api.Nodes().List((&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	byName := map[string]*nomadapi.NodeListStub{}
	for _, s := range stubs {
		byName[s.Name] = s
	}
	for _, nd := range nodes {
		s := byName[nd.Name]
		if s == nil {
			return fmt.Errorf("%s not registered", nd.Name)
		}
		if s.Status != nomadapi.NodeStatusReady {
			return fmt.Errorf("%s is %s", nd.Name, s.Status)
		}
		for _, d := range []string{"raw_exec", "exec"} {
			di := s.Drivers[d]
			if di == nil || !di.Detected || !di.Healthy {
				return fmt.Errorf("%s: driver %s not healthy (%+v)", nd.Name, d, di)
			}
		}
	}
	return nil
}

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
