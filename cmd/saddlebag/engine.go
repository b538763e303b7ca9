package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/internal/statusapi"
	"github.com/saddlebag/saddlebag/internal/units"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/frontend/nbd"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// sizeFlag is a byte size flag with units, read as Nomad reads a volume
// spec's capacity (internal/units): 10GiB is 10×2^30 bytes, 10G and
// 10GB are 10×10^9.
type sizeFlag int64

func (s *sizeFlag) String() string { return units.FormatBytes(int64(*s)) }
func (s *sizeFlag) Set(v string) error {
	n, err := units.ParseBytes(v)
	*s = sizeFlag(n)
	return err
}

func init() {
	register("engine", "run a volume's primary engine and serve it over NBD", runEngine)
}

func runEngine(ctx context.Context, args []string) error {
	fs := newFlagSet("engine")
	volume := fs.String("volume", "", "volume name (required)")
	var size sizeFlag
	fs.Var(&size, "size", "volume size, a multiple of 4KiB, with units as in a Nomad volume spec: 256MiB, 10GiB (10×2^30; 10G and 10GB are 10×10^9) (required)")
	epoch := fs.Uint64("epoch", 0, "this primary's epoch, higher than any earlier primary's (required, > 0)")
	var replicas, local stringList
	fs.Var(&replicas, "replica", "replica server host:port (repeat for each replica; at least one)")
	fs.Var(&local, "local-replica", "host:port of a --replica on this node, preferred for reads")
	socket := fs.String("nbd-socket", "", "unix socket path to serve the volume on over NBD (this or --mount is required)")
	mnt := addMountFlags(fs)
	timeout := fs.Duration("replica-timeout", 5*time.Second, "drop a replica that does not answer a request within this time")
	minInSync := fs.Int("min-in-sync", 1, "fewest in-sync replicas a write completes with; below it writes wait for resync")
	var inSync stringList
	fs.Var(&inSync, "in-sync", "a --replica known to hold every acknowledged write (repeat, with --in-sync-gen; default: the replicas' own history decides)")
	inSyncGen := fs.Uint64("in-sync-gen", 0, "the generation of the --in-sync set (the replicas' membership generation, as `saddlebag status` shows it)")
	var resyncRate sizeFlag
	fs.Var(&resyncRate, "resync-rate", "limit resync traffic per replica to this many bytes per second, with units (e.g. 100MiB); 0 = unlimited")
	progress := fs.Duration("progress-interval", 5*time.Second, "how often resync progress is logged")
	statusAddr := fs.String("status-addr", "", "host:port to serve the engine status on (GET /v1/status; read it with saddlebag status)")
	logLevel := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	var consul leader.ConsulConfig
	addConsulAPIFlags(fs, &consul)
	var insecure bool
	addInsecureFlag(fs, &insecure)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *volume == "":
		return usageError{errors.New("--volume is required")}
	case size == 0:
		return usageError{errors.New("--size is required")}
	case *epoch == 0:
		return usageError{errors.New("--epoch is required and must be above 0")}
	case len(replicas) == 0:
		return usageError{errors.New("at least one --replica is required")}
	case *socket == "" && mnt.path == "":
		return usageError{errors.New("--nbd-socket or --mount is required")}
	}
	if err := mnt.check(*volume, *socket); err != nil {
		return usageError{err}
	}
	if err := wire.ValidateSize(int64(size)); err != nil {
		return usageError{fmt.Errorf("--size %s: %w (GiB, MiB and KiB are powers of 1024; G, GB, M, MB, k and kB powers of 1000, as in Nomad's volume specs)", size.String(), err)}
	}
	if mnt.path != "" {
		// Before anything starts, by the rule the spec checks use, rather
		// than mkfs's own usage text in the log later.
		if err := volspec.FitsFS(mnt.fsType, int64(size)); err != nil {
			return usageError{fmt.Errorf("--size %s: %w, or pick another --fs-type", size.String(), err)}
		}
	}
	if err := wire.ValidateVolumeID(*volume); err != nil {
		return usageError{fmt.Errorf("--volume: %w", err)}
	}
	cfg := replication.EngineConfig{Volume: *volume, Size: int64(size), Epoch: *epoch, Timeout: *timeout,
		MinInSync: *minInSync, ResyncRate: int64(resyncRate), ProgressInterval: *progress}
	if len(inSync) > 0 {
		cfg.Recorded = &wire.Membership{Gen: *inSyncGen, Replicas: inSync}
	}
	if *minInSync < 1 || *minInSync > len(replicas) {
		return usageError{fmt.Errorf("--min-in-sync %d must be between 1 and the %d replicas", *minInSync, len(replicas))}
	}
	for _, r := range inSync {
		if !slices.Contains(replicas, r) {
			return usageError{fmt.Errorf("--in-sync %s is not one of the --replica addresses", r)}
		}
	}
	for _, addr := range replicas {
		cfg.Replicas = append(cfg.Replicas, replication.ReplicaConfig{Addr: addr, Local: slices.Contains(local, addr)})
	}
	for _, l := range local {
		if !slices.Contains(replicas, l) {
			return usageError{fmt.Errorf("--local-replica %s is not one of the --replica addresses", l)}
		}
	}
	log := newLogger("saddlebag", *logLevel)
	cfg.Log = log
	cfg.Hook = replication.LogHook{Log: log.Named("in-sync")}

	tr, err := dialTransport(ctx, insecure, consul, connecttls.NodeService, log)
	if err != nil {
		return err
	}
	defer tr.close()
	cfg.Dial = tr.replicaDialer()

	if mnt.path != "" {
		if err := mnt.clearLeftovers(ctx, *volume, log); err != nil {
			return err
		}
	}
	eng, err := replication.StartEngine(ctx, cfg)
	if err != nil {
		return err
	}
	defer eng.Close()
	if *statusAddr != "" {
		sl, err := net.Listen("tcp", *statusAddr)
		if err != nil {
			return fmt.Errorf("listen for status: %w", err)
		}
		sl, authorize := tr.statusListener(sl)
		log.Info("serving status", "addr", sl.Addr().String(), "tls", authorize != nil)
		go statusapi.Serve(ctx, sl, eng, authorize, log)
	}

	if mnt.path != "" {
		return serveMounted(ctx, eng, *volume, mnt, *timeout, log)
	}
	if err := os.Remove(*socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", *socket)
	if err != nil {
		return fmt.Errorf("listen on nbd socket: %w", err)
	}
	defer os.Remove(*socket)
	log.Info("serving volume over nbd", "volume_id", *volume, "socket", *socket, "uri", "nbd+unix:///?socket="+*socket)
	serveErr := nbd.NewServer(eng, *volume, log).Serve(ctx, ln)

	shutdown(eng, *timeout, log)
	return serveErr
}

// shutdown stops the engine cleanly: everything written so far is made
// durable, bitmaps of replicas that are behind are persisted and the
// activity log is cleared, so the next primary has nothing to reconcile.
func shutdown(eng *replication.Engine, timeout time.Duration, log hclog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*timeout)
	defer cancel()
	if err := eng.Shutdown(ctx); err != nil && !errors.Is(err, replication.ErrFenced) {
		log.Error("clean shutdown failed; the next primary reconciles as after a crash", "error", err)
	}
	st := eng.Status()
	log.Info("engine stopped", "fenced", st.Fenced, "in_sync", st.InSync)
}
