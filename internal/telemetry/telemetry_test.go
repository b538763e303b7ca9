package telemetry

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	dto "github.com/prometheus/client_model/go"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/replica"
)

// scrape fetches the handler's Prometheus text and parses it.
func scrape(t *testing.T, h http.Handler, query string) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, Path+query, nil))
	must.Eq(t, http.StatusOK, rec.Code, must.Sprint(rec.Body.String()))
	fams, err := ParseText(rec.Body)
	must.NoError(t, err)
	return fams
}

// value returns the value of the series of name whose labels include
// want, and whether there is one.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		if !hasLabels(m, want) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Summary != nil:
			return float64(m.GetSummary().GetSampleCount()), true
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok && v == l.GetValue() {
			n++
		}
	}
	return n == len(want)
}

func startReplica(t *testing.T) string {
	t.Helper()
	store, err := replica.OpenStore(t.TempDir(), hclog.NewNullLogger())
	must.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = replica.NewServer(store, hclog.NewNullLogger()).Serve(ctx, ln)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

// TestEngineMetricsScraped: a running engine's volume shows up with its
// replica counts, I/O counters and latency histogram; after it closes
// its gauges are gone and its counters stay.
func TestEngineMetricsScraped(t *testing.T) {
	tel, err := New()
	must.NoError(t, err)
	h := tel.Handler(hclog.NewNullLogger())
	ctx := context.Background()
	eng, err := replication.StartEngine(ctx, replication.EngineConfig{Volume: "tel-vol", Size: 16 << 20, Epoch: 3, Want: 3,
		Replicas: []replication.ReplicaConfig{{Addr: startReplica(t)}, {Addr: startReplica(t)}}})
	must.NoError(t, err)
	defer eng.Close()
	must.NoError(t, eng.WriteAt(ctx, make([]byte, 65536), 0, false))
	must.NoError(t, eng.Flush(ctx))

	fams := scrape(t, h, "?format=prometheus")
	vol := map[string]string{"volume": "tel-vol"}
	for name, want := range map[string]float64{
		VolumeReplicasInSync: 2, VolumeReplicasWanted: 3, VolumeReplicas: 2, VolumeEpoch: 3, VolumeSize: 16 << 20,
		VolumeFenced: 0, VolumeHeld: 0, VolumeResyncRemaining: 0, VolumeReplicaDrops: 0,
	} {
		got, ok := value(fams, name, vol)
		must.True(t, ok, must.Sprintf("%s missing", name))
		must.Eq(t, want, got, must.Sprintf("%s", name))
	}
	w := map[string]string{"volume": "tel-vol", "op": "write"}
	got, _ := value(fams, VolumeIOBytes, w)
	must.Eq(t, 65536.0, got)
	got, _ = value(fams, VolumeIOLatency, w)
	must.Eq(t, 1.0, got)
	got, _ = value(fams, VolumeIORequests, map[string]string{"volume": "tel-vol", "op": "flush"})
	must.Eq(t, 1.0, got)
	must.NotNil(t, fams["go_goroutines"])
	must.NotNil(t, fams["process_resident_memory_bytes"])
	got, ok := value(fams, ControllerPlacementFailures, map[string]string{"op": "create"})
	must.True(t, ok, must.Sprint("placement failures are declared at zero"))
	must.Eq(t, 0.0, got)

	eng.Close()
	fams = scrape(t, h, "")
	_, ok = value(fams, VolumeReplicasInSync, vol)
	must.False(t, ok, must.Sprint("a closed engine's gauges must go"))
	got, _ = value(fams, VolumeIOBytes, w)
	must.Eq(t, 65536.0, got)
}

// TestEventMetrics: CSI calls by service, method and code, placement
// failures by op, and sampled gauges, through go-metrics.
func TestEventMetrics(t *testing.T) {
	tel, err := New()
	must.NoError(t, err)
	h := tel.Handler(hclog.NewNullLogger())
	CSICall("/csi.v1.Controller/CreateVolume", "OK", 20*time.Millisecond)
	CSICall("/csi.v1.Controller/CreateVolume", "OK", 30*time.Millisecond)
	CSICall("/csi.v1.Controller/CreateVolume", "ResourceExhausted", time.Millisecond)
	PlacementFailure("create")
	SetGauge(NodeStagedVolumes, 2)
	fams := scrape(t, h, "?format=prometheus")
	got, _ := value(fams, CSICalls, map[string]string{"service": "Controller", "method": "CreateVolume", "code": "OK"})
	must.Eq(t, 2.0, got)
	got, _ = value(fams, CSICalls, map[string]string{"method": "CreateVolume", "code": "ResourceExhausted"})
	must.Eq(t, 1.0, got)
	got, _ = value(fams, CSICallDuration, map[string]string{"method": "CreateVolume"})
	must.Eq(t, 3.0, got)
	got, _ = value(fams, ControllerPlacementFailures, map[string]string{"op": "create"})
	must.Eq(t, 1.0, got)
	got, _ = value(fams, NodeStagedVolumes, nil)
	must.Eq(t, 2.0, got)
}

// TestHandlerFormats: format=prometheus or none; another is refused.
func TestHandlerFormats(t *testing.T) {
	tel, err := New()
	must.NoError(t, err)
	srv := httptest.NewServer(tel.Handler(hclog.NewNullLogger()))
	defer srv.Close()
	resp, err := http.Get(srv.URL + Path + "?format=json")
	must.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	must.Eq(t, http.StatusBadRequest, resp.StatusCode)
	must.StrContains(t, string(b), "format=prometheus")
	resp, err = http.Get(srv.URL + Path + "?format=prometheus")
	must.NoError(t, err)
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	must.Eq(t, http.StatusOK, resp.StatusCode)
	must.True(t, strings.Contains(string(b), "# TYPE go_goroutines gauge"))
}
