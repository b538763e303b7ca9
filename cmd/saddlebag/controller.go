package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/internal/ctxutil"
	"github.com/saddlebag/saddlebag/internal/telemetry"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin"
)

func init() {
	register("controller", "run the CSI controller: volumes, placement, re-replication (active/standby through Consul)", runController)
}

// controllerFlags are `saddlebag controller`'s settings.
type controllerFlags struct {
	name, endpoint, logLevel string
	forwardAddr              string
	consul                   leader.ConsulConfig
	lockDelay, ttl           time.Duration
	grace, scanEvery         time.Duration
	createTimeout            time.Duration
	replicaTimeout           time.Duration
	insecure                 bool
	metricsAddr              string
}

func parseControllerFlags(args []string) (*controllerFlags, error) {
	f := &controllerFlags{}
	fs := newFlagSet("controller")
	fs.StringVar(&f.name, "name", "", "this controller instance's name (default: the host name)")
	fs.StringVar(&f.endpoint, "csi-endpoint", os.Getenv(plugin.EndpointEnv), "serve CSI on this unix socket (unix:///path; default $CSI_ENDPOINT, which Nomad sets)")
	fs.StringVar(&f.forwardAddr, "forward-addr", ":"+defaultForwardPort, "host:port where this controller serves, while active, the mutating calls standbys forward to it "+
		"(published in the leadership lock; mutual TLS between saddlebag-controller identities); an empty host is the address the local Consul agent advertises")
	addConsulFlags(fs, &f.consul)
	fs.DurationVar(&f.lockDelay, "lock-delay", time.Second, "session lock-delay of the leadership lock: how long a standby waits, after the active controller's session died, before it takes over "+
		"(every record write is checked against the leadership session in the same Consul transaction, so this delay guards nothing else; a failover whose node also ran the active controller waits for it, issue 12)")
	fs.DurationVar(&f.ttl, "ttl", 10*time.Second, "TTL of the controller's Consul check (fed every ttl/3)")
	fs.DurationVar(&f.grace, "replica-grace", 5*time.Minute, "how long a replica's node may be down before the replica is re-created on another node")
	fs.DurationVar(&f.createTimeout, "create-timeout", 5*time.Minute, "how long a volume whose create was interrupted (a controller crash) stays before the active controller removes its replicas and record; ListVolumes shows it meanwhile")
	fs.DurationVar(&f.scanEvery, "replica-scan", 5*time.Second, "how often the active controller looks for replicas to replace")
	fs.DurationVar(&f.replicaTimeout, "replica-timeout", 10*time.Second, "bound on each request to a node's replica server (create, delete)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	addInsecureFlag(fs, &f.insecure)
	addMetricsFlag(fs, &f.metricsAddr, telemetry.DefaultControllerAddr)
	if err := parseFlagsWithConfig(fs, args, controllerConfigFlags); err != nil {
		return nil, err
	}
	if f.endpoint == "" {
		return nil, usageError{errors.New("--csi-endpoint (or $CSI_ENDPOINT) is required")}
	}
	if _, err := plugin.SocketPath(f.endpoint); err != nil {
		return nil, usageError{fmt.Errorf("--csi-endpoint: %w", err)}
	}
	if host, _, err := net.SplitHostPort(f.forwardAddr); err != nil {
		return nil, usageError{fmt.Errorf("--forward-addr: %w", err)}
	} else if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return nil, usageError{fmt.Errorf("--forward-addr %s: standbys dial the published address, so it needs a host they can reach, not a wildcard", f.forwardAddr)}
	}
	if f.grace <= 0 || f.scanEvery <= 0 || f.createTimeout <= 0 {
		return nil, usageError{errors.New("--replica-grace, --replica-scan and --create-timeout must be positive")}
	}
	if f.name == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("controller name: %w", err)
		}
		f.name = h
	}
	if err := leader.ValidateNodeName(f.name); err != nil {
		return nil, usageError{fmt.Errorf("--name: %w", err)}
	}
	return f, nil
}

// defaultForwardPort is the port of --forward-addr when none is given.
const defaultForwardPort = "7410"

// listenForward listens on the --forward-addr address, taking an empty
// host from the local Consul agent (retried until ctx ends: Consul may
// start after the controller).
func listenForward(ctx context.Context, addr string, client *leader.Client, log hclog.Logger) (net.Listener, error) {
	host, port, _ := net.SplitHostPort(addr)
	for host == "" {
		h, err := client.AgentAddr()
		if err == nil {
			host = h
			break
		}
		log.Warn("cannot learn this host's address from consul for --forward-addr; retrying", "error", err)
		if err := ctxutil.Sleep(ctx, time.Second); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, fmt.Errorf("--forward-addr: %w", err)
	}
	return ln, nil
}

func runController(ctx context.Context, args []string) error {
	f, err := parseControllerFlags(args)
	if err != nil {
		return err
	}
	log := newLogger("saddlebag", f.logLevel).With("controller", f.name)
	client, err := leader.NewClient(f.consul, log)
	if err != nil {
		return err
	}
	tr, err := newTransport(ctx, f.insecure, client.API(), connecttls.ControllerService, log)
	if err != nil {
		return err
	}
	defer tr.close()
	agent, err := leader.NewAgent(leader.AgentConfig{Client: client, Node: f.name, Service: leader.ControllerService,
		TTL: f.ttl, LockDelay: f.lockDelay, Log: log})
	if err != nil {
		return usageError{err}
	}
	fwdLn, err := listenForward(ctx, f.forwardAddr, client, log)
	if err != nil {
		return err
	}
	defer fwdLn.Close()
	ctl, err := plugin.NewController(plugin.ControllerConfig{Client: client, Agent: agent, Grace: f.grace, CreateTimeout: f.createTimeout,
		ScanEvery: f.scanEvery, ReplicaTimeout: f.replicaTimeout, ForwardAddr: fwdLn.Addr().String(),
		Dial: tr.replicaDialer(), ForwardCreds: tr.grpcCredentials(connecttls.ControllerService), Log: log})
	if err != nil {
		return err
	}
	defer ctl.Close()
	// The agent outlives the controller loop so the leadership lock is
	// released explicitly before the session goes.
	agentCtx, stopAgent := context.WithCancel(context.WithoutCancel(ctx))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var agentWG, wg sync.WaitGroup
	agentWG.Go(func() { _ = agent.Run(agentCtx) })
	wg.Go(startMetrics(ctx, f.metricsAddr, log, func() { telemetry.SetGauge(telemetry.ControllerActive, b2f(ctl.Active())) }))
	wg.Go(func() { _ = ctl.Run(ctx) })
	var fwdErr error
	wg.Go(func() {
		fwdErr = plugin.ServeForward(ctx, fwdLn, log, func(s *grpc.Server) { csi.RegisterControllerServer(s, ctl) },
			tr.grpcServerOptions(connecttls.ControllerService)...)
		cancel() // without its forward channel a controller is of no use as the active one
	})
	id := &plugin.Identity{Version: version, Ready: func() bool { return agent.SessionID() != "" }}
	serveErr := plugin.Serve(ctx, f.endpoint, log, func(s *grpc.Server) {
		csi.RegisterIdentityServer(s, id)
		csi.RegisterControllerServer(s, ctl)
	})
	cancel() // a failed server stops the controller too
	wg.Wait()
	stopAgent()
	agentWG.Wait()
	return errors.Join(serveErr, fwdErr)
}
