package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/internal/primary"
	"github.com/saddlebag/saddlebag/internal/telemetry"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication/replica"
)

func init() {
	register("node", "run the node agent: replica server, Consul registration, session and leases", runNode)
}

// nodeFlags are `saddlebag node`'s settings: flags, over the agent config
// file given with -config (see config.go).
type nodeFlags struct {
	dataDir, listen, advertise, node, logLevel string
	consul                                     leader.ConsulConfig
	labels                                     stringList
	lockDelay, ttl                             time.Duration
	csi                                        csiNodeFlags
	insecure                                   bool
	metricsAddr                                string
	resyncRate                                 sizeFlag
}

func parseNodeFlags(args []string) (*nodeFlags, error) {
	f := &nodeFlags{}
	fs := newFlagSet("node")
	fs.StringVar(&f.dataDir, "data-dir", "", "directory holding this node's replicas (required)")
	fs.StringVar(&f.listen, "listen", "", "host:port the replica server listens on (required)")
	fs.StringVar(&f.advertise, "advertise", "", "host:port other nodes reach the replica server at (default: the listen address)")
	fs.StringVar(&f.node, "node", "", "node name (default: the host name)")
	fs.Var(&f.labels, "label", "failure-domain label key=value, e.g. rack=r1 (repeat)")
	addConsulFlags(fs, &f.consul)
	fs.DurationVar(&f.lockDelay, "lock-delay", 5*time.Second, "session lock-delay: how long nobody may take a lock this node held after its session dies; a cut-off primary holds I/O after half of it")
	fs.DurationVar(&f.ttl, "ttl", 10*time.Second, "TTL of the agent's Consul check (fed every ttl/3); its session dies when the check goes critical")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	addCSINodeFlags(fs, &f.csi)
	addInsecureFlag(fs, &f.insecure)
	addMetricsFlag(fs, &f.metricsAddr, telemetry.DefaultNodeAddr)
	fs.Var(&f.resyncRate, "resync-rate", "limit each primary's resync traffic per replica to this many bytes per second, with units (e.g. 100MiB); 0 = unlimited")
	if err := parseFlagsWithConfig(fs, args, nodeConfigFlags); err != nil {
		return nil, err
	}
	if f.dataDir == "" || f.listen == "" {
		return nil, usageError{errors.New("--data-dir and --listen are required")}
	}
	if f.node == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("node name: %w", err)
		}
		f.node = h
	}
	if err := leader.ValidateNodeName(f.node); err != nil {
		return nil, usageError{fmt.Errorf("--node: %w", err)}
	}
	for _, l := range f.labels {
		if k, _, ok := strings.Cut(l, "="); !ok || k == "" {
			return nil, usageError{fmt.Errorf("--label %q: want key=value", l)}
		}
	}
	if err := f.csi.check(f.node); err != nil {
		return nil, err
	}
	return f, nil
}

func runNode(ctx context.Context, args []string) error {
	f, err := parseNodeFlags(args)
	if err != nil {
		return err
	}
	log := newLogger("saddlebag", f.logLevel).With("node", f.node)
	store, err := replica.OpenStore(f.dataDir, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	advertise := f.advertise
	if advertise == "" {
		advertise = ln.Addr().String()
	}
	host, port, err := splitHostPort(advertise)
	if err != nil {
		ln.Close()
		return usageError{fmt.Errorf("--advertise: %w", err)}
	}
	client, err := leader.NewClient(f.consul, log)
	if err != nil {
		ln.Close()
		return err
	}
	tr, err := newTransport(ctx, f.insecure, client.API(), connecttls.NodeService, log)
	if err != nil {
		ln.Close()
		return err
	}
	defer tr.close()
	labels := map[string]string{}
	for _, l := range f.labels {
		k, v, _ := strings.Cut(l, "=")
		labels[k] = v
	}
	agent, err := leader.NewAgent(leader.AgentConfig{
		Client: client, Node: f.node, Address: host, Port: port, Meta: labels,
		TTL: f.ttl, LockDelay: f.lockDelay, Log: log,
		Record: func() leader.NodeRecord {
			capacity, free := diskSpace(f.dataDir)
			return leader.NodeRecord{ReplicaAddr: advertise, CapacityBytes: capacity, FreeBytes: free, Labels: labels,
				MaxVolumes: int(f.csi.maxVolumes), Version: version}
		},
	})
	if err != nil {
		ln.Close()
		return usageError{err}
	}

	// The agent outlives the CSI service so that it can release leases
	// cleanly; the replica server stops with ctx.
	agentCtx, stopAgent := context.WithCancel(context.WithoutCancel(ctx))
	var agentWG, wg sync.WaitGroup
	agentWG.Go(func() { _ = agent.Run(agentCtx) })
	waitMetrics := startMetrics(ctx, f.metricsAddr, log, sampleNode(f.dataDir))
	defer waitMetrics()
	wg.Go(func() { primary.PublishProgress(ctx, client, f.node, primary.ProgressInterval, log) })
	// The replica server outlives the CSI service, so that the engines
	// it stops (unstaged, or handed over to the next process) flush to
	// this node's replica too instead of dropping it.
	csiDone := make(chan struct{})
	replicaCtx, stopReplicas := context.WithCancel(context.WithoutCancel(ctx))
	defer stopReplicas()
	go func() {
		<-ctx.Done()
		<-csiDone
		stopReplicas()
	}()
	var serveErr error
	wg.Go(func() {
		log.Info("serving replicas", "data_dir", f.dataDir, "addr", ln.Addr().String(), "advertise", advertise, "tls", !f.insecure)
		serveErr = replica.NewServer(store, log).WithGuard(tr.replicaGuard()).Serve(replicaCtx, ln)
	})
	var csiErr error
	if f.csi.endpoint != "" {
		wg.Go(func() {
			defer close(csiDone)
			csiErr = serveCSINode(ctx, f, agent, client, labels, tr.replicaDialer(), log)
		})
	} else {
		close(csiDone)
	}
	wg.Wait()
	stopAgent()
	agentWG.Wait()
	return errors.Join(serveErr, csiErr)
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	var port int
	if _, err := fmt.Sscanf(p, "%d", &port); err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", addr)
	}
	return host, port, nil
}

// diskSpace returns the capacity and free bytes of the file system
// holding dir (zeros if it cannot be read).
func diskSpace(dir string) (int64, int64) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize
}
