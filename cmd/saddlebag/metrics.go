package main

import (
	"context"
	"flag"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/internal/telemetry"
	csinode "github.com/saddlebag/saddlebag/plugin/node"
	"github.com/saddlebag/saddlebag/replication"
)

// addMetricsFlag adds --metrics-addr with the process kind's default.
func addMetricsFlag(fs *flag.FlagSet, addr *string, def string) {
	fs.StringVar(addr, "metrics-addr", def, "host:port serving metrics at /v1/metrics?format=prometheus (loopback by default; empty: none). "+
		"A port that cannot be bound is logged and the process runs without metrics")
}

// sampleInterval is how often process-wide gauges are set.
const sampleInterval = 2 * time.Second

// startMetrics serves the metrics endpoint on addr and calls sample every
// sampleInterval until ctx ends; the returned function waits for both.
// Storage does not depend on metrics: when addr cannot be bound the
// process goes on without them, saying so.
func startMetrics(ctx context.Context, addr string, log hclog.Logger, sample func()) func() {
	if addr == "" {
		return func() {}
	}
	log = log.Named("metrics")
	tel, err := telemetry.New()
	if err != nil {
		log.Error("metrics not served", "error", err)
		return func() {}
	}
	ln, err := telemetry.Listen(addr)
	if err != nil {
		log.Error("metrics not served: cannot listen", "addr", addr, "error", err)
		return func() {}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := tel.Serve(ctx, ln, log); err != nil {
			log.Error("metrics endpoint", "error", err)
		}
	})
	wg.Go(func() { telemetry.Sample(ctx, sampleInterval, sample) })
	return wg.Wait
}

// csiNodeService is the CSI node service of this process once it serves
// one (for the staged-volumes gauge).
var csiNodeService atomic.Pointer[csinode.Node]

// sampleNode sets the node's gauges: staged volumes, volumes it is
// primary of, and the data directory's capacity and free space.
func sampleNode(dataDir string) func() {
	return func() {
		staged := 0
		if n := csiNodeService.Load(); n != nil {
			staged = n.StagedVolumes()
		}
		telemetry.SetGauge(telemetry.NodeStagedVolumes, float64(staged))
		primaries := map[string]bool{}
		for _, e := range replication.RunningEngines() {
			if !e.Fenced() {
				primaries[e.Volume()] = true
			}
		}
		telemetry.SetGauge(telemetry.NodePrimaryVolumes, float64(len(primaries)))
		capacity, free := diskSpace(dataDir)
		telemetry.SetGauge(telemetry.NodeCapacity, float64(capacity))
		telemetry.SetGauge(telemetry.NodeFree, float64(free))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
