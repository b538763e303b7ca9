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
