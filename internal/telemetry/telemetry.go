package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	gometrics "github.com/hashicorp/go-metrics"
	promsink "github.com/hashicorp/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Path is where the metrics are served.
const Path = "/v1/metrics"

// Default addresses of --metrics-addr: loopback, one port per process
// kind so that a node and a controller on one host do not collide.
const (
	DefaultNodeAddr       = "127.0.0.1:7420"
	DefaultControllerAddr = "127.0.0.1:7421"
)

// service is the go-metrics service name: every key starts with it.
const service = "saddlebag"

// Telemetry is a process's metrics: a Prometheus registry fed by the
// go-metrics Prometheus sink, the engine collector and the Go and process
// collectors.
type Telemetry struct {
	reg *prometheus.Registry
}

var (
	globalMu sync.Mutex
	current  *Telemetry
)

// New sets up the process's metrics and makes its sink go-metrics'
// global one (as Nomad and Consul do), so that the package's helpers
// (CSICall, PlacementFailure, SetGauge) record into it. A second call
// replaces the first (tests).
func New() (*Telemetry, error) {
	reg := prometheus.NewRegistry()
	sink, err := promsink.NewPrometheusSinkFrom(promsink.PrometheusOpts{
		Registerer: reg,
		Name:       "saddlebag_go_metrics_sink",
		// Never expire: counters must keep counting across quiet hours,
		// and every gauge here is process-wide and re-set by a sampler.
		Expiration:         0,
		CounterDefinitions: counterDefinitions,
	})
	if err != nil {
		return nil, fmt.Errorf("prometheus sink: %w", err)
	}
	conf := gometrics.DefaultConfig(service)
	conf.EnableHostname = false
	conf.EnableRuntimeMetrics = false // the Go collector below has them
	if _, err := gometrics.NewGlobal(conf, sink); err != nil {
		return nil, fmt.Errorf("go-metrics: %w", err)
	}
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		engineCollector{},
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register collector: %w", err)
		}
	}
	t := &Telemetry{reg: reg}
	globalMu.Lock()
	current = t
	globalMu.Unlock()
	return t, nil
}

// counterDefinitions are the counters shown at zero before anything
// happened, so that a rate over them is defined from the start.
var counterDefinitions = []promsink.CounterDefinition{
	{Name: []string{ControllerPlacementFailures}, ConstLabels: []gometrics.Label{{Name: "op", Value: "create"}}, Help: placementHelp},
	{Name: []string{ControllerPlacementFailures}, ConstLabels: []gometrics.Label{{Name: "op", Value: "replace"}}, Help: placementHelp},
}

const placementHelp = "placements the scheduler could not make: op=create, a CreateVolume refused (ResourceExhausted); " +
	"op=replace, a replica lost beyond the grace that no node could take (each re-replication pass)"

// Gatherer is the registry, for tests.
func (t *Telemetry) Gatherer() prometheus.Gatherer { return t.reg }

// Handler answers GET /v1/metrics?format=prometheus (the format may be
// left out; any other is 400).
func (t *Telemetry) Handler(log hclog.Logger) http.Handler {
	prom := promhttp.HandlerFor(t.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError,
		ErrorLog: promLog{log}})
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Path, func(w http.ResponseWriter, r *http.Request) {
		if f := r.URL.Query().Get("format"); f != "" && f != "prometheus" {
			http.Error(w, fmt.Sprintf("format %q: only format=prometheus is served", f), http.StatusBadRequest)
			return
		}
		prom.ServeHTTP(w, r)
	})
	return mux
}

type promLog struct{ log hclog.Logger }

func (l promLog) Println(v ...any) {
	l.log.Warn("metrics", "error", strings.TrimSpace(fmt.Sprintln(v...)))
}

// Listen listens on addr for the metrics endpoint.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	return ln, nil
}

// Serve serves the metrics endpoint on ln until ctx ends.
func (t *Telemetry) Serve(ctx context.Context, ln net.Listener, log hclog.Logger) error {
	srv := &http.Server{Handler: t.Handler(log), ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	defer stop()
	log.Info("serving metrics", "addr", ln.Addr().String(), "path", Path+"?format=prometheus")
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Sample calls f now and then every interval until ctx ends: for gauges
// go-metrics holds (f sets them with SetGauge).
func Sample(ctx context.Context, interval time.Duration, f func()) {
	f()
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			f()
		}
	}
}

// key turns a metric name of names.go into a go-metrics key (without the
// service name, which go-metrics prefixes).
func key(name string) []string {
	return []string{strings.TrimPrefix(name, service+"_")}
}

// SetGauge sets a process-wide gauge of names.go.
func SetGauge(name string, v float64) {
	gometrics.SetPrecisionGauge(key(name), v)
}

// CSICall counts one CSI call: its service and method (from the gRPC full
// method), its status code, and its duration.
func CSICall(fullMethod, code string, d time.Duration) {
	svc, method := splitMethod(fullMethod)
	gometrics.IncrCounterWithLabels(key(CSICalls), 1, []gometrics.Label{
		{Name: "service", Value: svc}, {Name: "method", Value: method}, {Name: "code", Value: code}})
	gometrics.AddSampleWithLabels(key(CSICallDuration), float32(d.Seconds()), []gometrics.Label{
		{Name: "service", Value: svc}, {Name: "method", Value: method}})
}

// splitMethod splits "/csi.v1.Controller/CreateVolume" into "Controller"
// and "CreateVolume".
func splitMethod(full string) (string, string) {
	svc, method, ok := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	if !ok {
		return "unknown", full
	}
	if i := strings.LastIndexByte(svc, '.'); i >= 0 {
		svc = svc[i+1:]
	}
	return svc, method
}

// PlacementFailure counts a placement the scheduler could not make: op
// "create" (CreateVolume) or "replace" (re-replication).
func PlacementFailure(op string) {
	gometrics.IncrCounterWithLabels(key(ControllerPlacementFailures), 1, []gometrics.Label{{Name: "op", Value: op}})
}
