package testcluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fastGossip makes a killed agent's serfHealth fail within about a
// second on loopback instead of Consul's LAN default of several.
const fastGossip = `gossip_lan {
  gossip_interval = "50ms"
  probe_interval  = "200ms"
  probe_timeout   = "100ms"
  suspicion_mult  = 3
  retransmit_mult = 2
}
performance { raft_multiplier = 1 }
`

// connect turns Consul Connect on: its CA issues the certificates every
// Saddlebag connection is secured with (internal/connecttls). Dev agents
// have it on already.
const connect = `connect { enabled = true }
`

// quiet keeps every agent from calling out to HashiCorp's update-check
// service: test and demo clusters talk to nothing but each other.
const quiet = `disable_update_check = true
`

// Options tunes the agents started.
type Options struct {
	// Dir holds logs and data directories (required).
	Dir string
	// HCL is extra agent configuration (ACLs, TLS, ...), added to every
	// agent started.
	HCL string
	// Binary is the consul binary; default ConsulBinary().
	Binary string
	// Token is the ACL token the harness itself uses to see whether an
	// agent is ready (when HCL turns ACLs on).
	Token string
	// Detach starts every agent in a session of its own (setsid), so it
	// outlives the process that started it and no terminal signal reaches
	// it: for a demo cluster that a later command tears down by PID.
	Detach bool
	// DefaultGossip runs the agents with Consul's own LAN gossip and
	// Raft timing instead of fastGossip: to measure what a cluster on
	// Consul's defaults takes to notice a dead node.
	DefaultGossip bool
}

// gossip is the gossip configuration the agents run with.
func (o Options) gossip() string {
	if o.DefaultGossip {
		return "# Consul's default gossip timing\n"
	}
	return fastGossip
}

// Layout places a cluster's agents. The zero Layout is StartCluster's:
// the server on 127.0.0.1 and client i on 127.0.0.(i+2).
type Layout struct {
	// ServerIP is the address the server binds (default 127.0.0.1). It
	// must be an address of this network namespace: its free ports are
	// probed here.
	ServerIP string
	// ServerWrap is a command prefix the server runs under (see
	// ClientSpec.Wrap), e.g. to run it in a network namespace of its
	// own; ServerIP must then be an address of that namespace, and the
	// server uses Consul's default ports (HTTP 8500, Serf LAN 8301, WAN
	// 8302, server RPC 8300), which this process cannot probe there.
	ServerWrap []string
	Clients    []ClientSpec
}

// ClientSpec places one client agent.
type ClientSpec struct {
	// Name is the Consul node name (default node<i+1>).
	Name string
	// IP is the address the agent binds.
	IP string
	// Wrap is a command prefix the agent runs under, for example
	// {"nsenter", "--net=/run/netns/ns1", "--"} to run it in a network
	// namespace. The prefix must exec the agent, so that the PID tracked
	// is the agent's own.
	Wrap []string
	// DefaultPorts uses Consul's default HTTP (8500) and LAN gossip
	// (8301) ports instead of probing for free ones: for an address in
	// another network namespace, which has ports of its own and which
	// this process cannot probe.
	DefaultPorts bool
	// LocalHTTP also serves the HTTP API on 127.0.0.1 (the namespace's
	// own loopback when Wrap enters one), where processes on a production
	// host expect their local agent.
	LocalHTTP bool
}

func (o *Options) binary() (string, error) {
	if o.Binary != "" {
		return o.Binary, nil
	}
	b, err := ConsulBinary()
	if err == nil {
		o.Binary = b
	}
	return b, err
}

// StartDev starts `consul agent -dev` (server and client in one, state in
// memory) on ip with random free ports, and waits until it is ready. The
// caller stops it (Stop or Kill).
func StartDev(ctx context.Context, ip, name string, o Options) (*Agent, error) {
	bin, err := o.binary()
	if err != nil {
		return nil, err
	}
	return startOnFreePorts(ctx, ip, 4, func(ports []int) *Agent {
		a := &Agent{
			Name: name, IP: ip, Server: true, bin: bin, token: o.Token, detach: o.Detach,
			HTTPAddr:    net.JoinHostPort(ip, strconv.Itoa(ports[0])),
			SerfLANAddr: net.JoinHostPort(ip, strconv.Itoa(ports[1])),
			logPath:     filepath.Join(o.Dir, name+".log"),
		}
		a.args = []string{"agent", "-dev", "-node", name, "-disable-host-node-id", "-bind", ip, "-client", ip,
			"-http-port", strconv.Itoa(ports[0]), "-serf-lan-port", strconv.Itoa(ports[1]),
			"-serf-wan-port", strconv.Itoa(ports[2]), "-server-port", strconv.Itoa(ports[3]),
			"-dns-port", "-1", "-grpc-port", "-1", "-log-level", "info",
			"-hcl", "ports { grpc_tls = -1 }", "-hcl", quiet}
		if o.HCL != "" {
			a.args = append(a.args, "-hcl", o.HCL)
		}
		return a
	})
}

// startOnFreePorts starts the agent mk makes for n ports picked free on
// ip and waits until it is ready. A port another process takes between
// the pick and the agent's bind makes the agent exit ("address already in
// use"): the ports are then picked again, up to three times.
func startOnFreePorts(ctx context.Context, ip string, n int, mk func(ports []int) *Agent) (*Agent, error) {
	var err error
	for range 3 {
		var ports []int
		if ports, err = freePorts(ip, n); err != nil {
			return nil, err
		}
		a := mk(ports)
		if err = startReady(ctx, a); err == nil || !strings.Contains(a.LogTail(40), "address already in use") {
			return a, err
		}
	}
	return nil, err
}

func startReady(ctx context.Context, a *Agent) error {
	if err := a.start(); err != nil {
		return err
	}
	if err := a.WaitReady(ctx); err != nil {
		a.Kill()
		return err
	}
	return nil
}

func freePorts(ip string, n int) ([]int, error) {
	ports := make([]int, 0, n)
	for len(ports) < n {
		p, err := freePort(ip)
		if err != nil {
			return nil, err
		}
		dup := false
		for _, q := range ports {
			dup = dup || q == p
		}
		if !dup {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// Cluster is one Consul server and a Consul client agent per simulated
// node, each on its own loopback address: the server on 127.0.0.1, client
// i on 127.0.0.(i+2).
type Cluster struct {
	Server  *Agent
	Clients []*Agent
}

// Stop stops every agent.
func (c *Cluster) Stop() {
	for _, a := range c.Clients {
		a.Stop()
	}
	if c.Server != nil {
		c.Server.Stop()
	}
}

// StartCluster starts a server and n client agents joined to it, with fast
// gossip failure detection, and waits until all are ready. On error it
// stops whatever it started.
func StartCluster(ctx context.Context, n int, o Options) (*Cluster, error) {
	var l Layout
	for i := range n {
		l.Clients = append(l.Clients, ClientSpec{IP: fmt.Sprintf("127.0.0.%d", i+2)})
	}
	return StartLayout(ctx, l, o)
}

// StartLayout is StartCluster with the addresses (and, for clients, the
// network namespaces) that l gives.
func StartLayout(ctx context.Context, l Layout, o Options) (*Cluster, error) {
	bin, err := o.binary()
	if err != nil {
		return nil, err
	}
	c := &Cluster{}
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()
	ip := l.ServerIP
	if ip == "" {
		ip = "127.0.0.1"
	}
	data := filepath.Join(o.Dir, "server-data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, err
	}
	server := func(ports []int) *Agent {
		a := &Agent{
			Name: "server", IP: ip, Server: true, bin: bin, token: o.Token, detach: o.Detach, wrap: l.ServerWrap,
			HTTPAddr:    net.JoinHostPort(ip, strconv.Itoa(ports[0])),
			SerfLANAddr: net.JoinHostPort(ip, strconv.Itoa(ports[1])),
			logPath:     filepath.Join(o.Dir, "server.log"),
		}
		a.args = []string{"agent", "-server", "-bootstrap-expect", "1", "-node", "server", "-disable-host-node-id",
			"-bind", ip, "-client", ip, "-data-dir", data,
			"-http-port", strconv.Itoa(ports[0]), "-serf-lan-port", strconv.Itoa(ports[1]),
			"-serf-wan-port", strconv.Itoa(ports[2]), "-server-port", strconv.Itoa(ports[3]),
			"-dns-port", "-1", "-grpc-port", "-1", "-log-level", "info",
			"-hcl", "ports { grpc_tls = -1 }", "-hcl", o.gossip(), "-hcl", quiet, "-hcl", connect}
		if o.HCL != "" {
			a.args = append(a.args, "-hcl", o.HCL)
		}
		return a
	}
	if len(l.ServerWrap) == 0 {
		c.Server, err = startOnFreePorts(ctx, ip, 4, server)
	} else {
		// In its own network namespace: the default ports are its own.
		c.Server = server([]int{8500, 8301, 8302, 8300})
		err = startReady(ctx, c.Server)
	}
	if err != nil {
		return nil, err
	}
	for i, spec := range l.Clients {
		ip := spec.IP
		ports := []int{8500, 8301}
		if !spec.DefaultPorts {
			if ports, err = freePorts(ip, 2); err != nil {
				return nil, err
			}
		}
		name := spec.Name
		if name == "" {
			name = fmt.Sprintf("node%d", i+1)
		}
		data := filepath.Join(o.Dir, name+"-data")
		if err := os.MkdirAll(data, 0o755); err != nil {
			return nil, err
		}
		a := &Agent{
			Name: name, IP: ip, bin: bin, token: o.Token, detach: o.Detach, wrap: spec.Wrap,
			HTTPAddr:    net.JoinHostPort(ip, strconv.Itoa(ports[0])),
			SerfLANAddr: net.JoinHostPort(ip, strconv.Itoa(ports[1])),
			logPath:     filepath.Join(o.Dir, name+".log"),
		}
		clientAddr := ip
		if spec.LocalHTTP {
			clientAddr = "127.0.0.1 " + ip
		}
		a.args = []string{"agent", "-node", name, "-disable-host-node-id", "-bind", ip, "-client", clientAddr, "-data-dir", data,
			"-http-port", strconv.Itoa(ports[0]), "-serf-lan-port", strconv.Itoa(ports[1]),
			"-retry-join", c.Server.SerfLANAddr, "-retry-interval", "200ms",
			"-dns-port", "-1", "-grpc-port", "-1", "-log-level", "info",
			"-hcl", "ports { grpc_tls = -1\n serf_wan = -1 }", "-hcl", o.gossip(), "-hcl", quiet}
		if o.HCL != "" {
			a.args = append(a.args, "-hcl", o.HCL)
		}
		c.Clients = append(c.Clients, a)
		if err := a.start(); err != nil {
			return nil, err
		}
	}
	for _, a := range c.Clients {
		if err := a.WaitReady(ctx); err != nil {
			return nil, err
		}
	}
	ok = true
	return c, nil
}

// Dev starts a dev agent on 127.0.0.1 for test t and stops it (by PID)
// when the test ends; the test fails if Consul cannot be had.
func Dev(t testing.TB, o Options) *Agent {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a, err := StartDev(ctx, "127.0.0.1", "dev", o)
	if err != nil {
		t.Fatalf("consul dev agent: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("consul %s log tail:\n%s", a.Name, a.LogTail(40))
		}
		a.Stop()
	})
	return a
}

// NewCluster starts a server and n client agents for test t and stops them
// (by PID) when the test ends; the test fails if Consul cannot be had.
func NewCluster(t testing.TB, n int, o Options) *Cluster {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := StartCluster(ctx, n, o)
	if err != nil {
		t.Fatalf("consul cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, a := range append([]*Agent{c.Server}, c.Clients...) {
				t.Logf("consul %s log tail:\n%s", a.Name, a.LogTail(30))
			}
		}
		c.Stop()
	})
	return c
}
