package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	dto "github.com/prometheus/client_model/go"
	"github.com/shoenig/test/must"
	"google.golang.org/grpc/codes"

	"github.com/saddlebag/saddlebag/internal/telemetry"
	"github.com/saddlebag/saddlebag/internal/testcluster"
)

var metricsAddrRE = regexpMust(`serving metrics: .*addr=(\S+)`)

// scrapeMetrics reads a process's /v1/metrics?format=prometheus.
func scrapeMetrics(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + telemetry.Path + "?format=prometheus")
	must.NoError(t, err)
	defer resp.Body.Close()
	must.Eq(t, http.StatusOK, resp.StatusCode)
	fams, err := telemetry.ParseText(resp.Body)
	must.NoError(t, err)
	return fams
}

// metricValue is the value of name's series whose labels include want
// (a histogram's or summary's sample count), and whether there is one.
func metricValue(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	for _, m := range fams[name].GetMetric() {
		matched := 0
		for _, l := range m.GetLabel() {
			if v, ok := want[l.GetName()]; ok && v == l.GetValue() {
				matched++
			}
		}
		if matched != len(want) {
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

// seriesNames are the names a query can use for what was scraped: each
// family's, and a histogram's _bucket, _sum and _count, a summary's _sum
// and _count.
func seriesNames(fams ...map[string]*dto.MetricFamily) map[string]bool {
	out := map[string]bool{}
	for _, fs := range fams {
		for name, f := range fs {
			out[name] = true
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
			case dto.MetricType_SUMMARY:
				out[name+"_sum"], out[name+"_count"] = true, true
			}
		}
	}
	return out
}

var (
	promStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promMatchers  = regexp.MustCompile(`\{[^}]*\}`)
	promRanges    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent     = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	labelValuesRE = regexp.MustCompile(`^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,`)
	promKeywords  = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true,
		"on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true}
)

// queriedMetrics returns the metric names a PromQL expression selects:
// every identifier that is not a function or aggregation (followed by a
// parenthesis), a keyword, a label in a grouping or matcher, or a string.
func queriedMetrics(expr string) []string {
	if m := labelValuesRE.FindStringSubmatch(expr); m != nil {
		return []string{m[1]}
	}
	s := promStrings.ReplaceAllString(expr, `""`)
	s = promMatchers.ReplaceAllString(s, " ")
	s = promRanges.ReplaceAllString(s, " ")
	s = promGrouping.ReplaceAllString(s, " ")
	var out []string
	for _, loc := range promIdent.FindAllStringIndex(s, -1) {
		name := s[loc[0]:loc[1]]
		rest := strings.TrimLeft(s[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "(") || promKeywords[strings.ToLower(name)] {
			continue
		}
		if loc[0] > 0 && (s[loc[0]-1] == '$' || (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9') || s[loc[0]-1] == '.') {
			continue // a variable, or the exponent of a number
		}
		out = append(out, name)
	}
	return out
}

// TestQueriedMetrics: the name extraction the dashboard test relies on.
func TestQueriedMetrics(t *testing.T) {
	for expr, want := range map[string][]string{
		`histogram_quantile(0.99, sum by (volume, op, le) (rate(a_bucket{volume=~"$volume", op=~"read|write"}[$__rate_interval])))`: {"a_bucket"},
		`count(max by (volume) (x{v="1"}) < max by (volume) (y)) or vector(0)`:                                                      {"x", "y"},
		`p and on (instance) (group by (instance) (q) or group by (instance) (r))`:                                                  {"p", "q", "r"},
		`label_values(saddlebag_volume_replicas_wanted, volume)`:                                                                    {"saddlebag_volume_replicas_wanted"},
		`sum(rate(m[5m])) / 1e3`: {"m"},
	} {
		must.Eq(t, want, queriedMetrics(expr), must.Sprint(expr))
	}
}

// dashboardQueries returns every PromQL expression of the dashboard
// (panels, rows' panels, template variables), by where it is.
func dashboardQueries(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	must.NoError(t, err)
	var d struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name, Type string
				Query      json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	must.NoError(t, json.Unmarshal(b, &d))
	out := map[string]string{}
	type panel struct {
		Title   string            `json:"title"`
		Type    string            `json:"type"`
		Panels  []json.RawMessage `json:"panels"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	}
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			must.NoError(t, json.Unmarshal(r, &p))
			walk(p.Panels)
			if p.Type != "row" {
				must.SliceNotEmpty(t, p.Targets, must.Sprintf("panel %q queries nothing", p.Title))
			}
			for _, tg := range p.Targets {
				must.NotEq(t, "", tg.Expr, must.Sprintf("panel %q target %s has no expression", p.Title, tg.RefID))
				out[fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)] = tg.Expr
			}
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct{ Query string }
		must.NoError(t, json.Unmarshal(v.Query, &q))
		out[fmt.Sprintf("variable %s", v.Name)] = q.Query
	}
	return out
}

// TestGrafanaDashboardMetricsExported runs a real node (a volume staged
// and written to) and a real controller (CSI calls, a placement failure)
// against Consul, scrapes both, and checks that every metric the
// dashboard in dashboards/ queries is one they export, and that the
// scraped values follow what happened.
func TestGrafanaDashboardMetricsExported(t *testing.T) {
	requireRoot(t)
	cl := testcluster.NewCluster(t, 2, testcluster.Options{})
	dir := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, dir) })
	recoverOnFailure(t, dir, filepath.Join(dir, "n1", "csi"), "dash")
	nodes := []*csiNode{
		startCSINode(t, cl.Clients[0].HTTPAddr, cl.Clients[0].IP, "n1", dir, true),
		startCSINode(t, cl.Clients[1].HTTPAddr, cl.Clients[1].IP, "n2", dir, true),
	}
	nodeMetrics := nodes[0].waitLine(t, metricsAddrRE, 10*time.Second)[1]
	ctlProc, ctlSock := startController(t, cl.Server.HTTPAddr, "c1", dir)
	ctlProc.waitLine(t, activeControlRE, 30*time.Second)
	ctlMetrics := ctlProc.waitLine(t, metricsAddrRE, 10*time.Second)[1]
	c := consulClient(t, cl.Server.HTTPAddr)
	waitHealthyNodes(t, c, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	ctl := csi.NewControllerClient(dialCSI(t, ctlSock))
	_, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "dash", Parameters: map[string]string{"replicas": "2"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	must.NoError(t, err)
	_, err = ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "too-many", Parameters: map[string]string{"replicas": "3"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	mustCode(t, codes.ResourceExhausted, err)
	_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "dash", NodeId: "n1", VolumeCapability: swCap})
	must.NoError(t, err)
	node := csi.NewNodeClient(dialCSI(t, nodes[0].sock))
	staging := filepath.Join(dir, "staging", "dash")
	_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "dash", StagingTargetPath: staging, VolumeCapability: swCap})
	must.NoError(t, err)
	t.Cleanup(func() {
		_, _ = node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: "dash", StagingTargetPath: staging})
	})
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i * 31)
	}
	writeSynced(t, filepath.Join(staging, "file"), data)

	var nodeFams map[string]*dto.MetricFamily
	vol := map[string]string{"volume": "dash"}
	waitForCond(t, 30*time.Second, "node gauges sampled and the volume in sync", func() bool {
		nodeFams = scrapeMetrics(t, nodeMetrics)
		staged, _ := metricValue(nodeFams, telemetry.NodeStagedVolumes, nil)
		inSync, _ := metricValue(nodeFams, telemetry.VolumeReplicasInSync, vol)
		return staged == 1 && inSync == 2
	})
	var ctlFams map[string]*dto.MetricFamily
	waitForCond(t, 10*time.Second, "the controller's active gauge sampled", func() bool {
		ctlFams = scrapeMetrics(t, ctlMetrics)
		active, _ := metricValue(ctlFams, telemetry.ControllerActive, nil)
		return active == 1
	})

	// The values follow what happened.
	for _, c := range []struct {
		fams   map[string]*dto.MetricFamily
		name   string
		labels map[string]string
		min    float64
	}{
		{nodeFams, telemetry.VolumeReplicasWanted, vol, 2},
		{nodeFams, telemetry.VolumeIOBytes, map[string]string{"volume": "dash", "op": "write"}, float64(len(data))},
		{nodeFams, telemetry.VolumeIOLatency, map[string]string{"volume": "dash", "op": "flush"}, 1},
		{nodeFams, telemetry.NodePrimaryVolumes, nil, 1},
		{nodeFams, telemetry.NodeCapacity, nil, 1},
		{nodeFams, telemetry.CSICalls, map[string]string{"service": "Node", "method": "NodeStageVolume", "code": "OK"}, 1},
		{ctlFams, telemetry.CSICalls, map[string]string{"service": "Controller", "method": "CreateVolume", "code": "OK"}, 1},
		{ctlFams, telemetry.CSICalls, map[string]string{"method": "CreateVolume", "code": "ResourceExhausted"}, 1},
		{ctlFams, telemetry.ControllerPlacementFailures, map[string]string{"op": "create"}, 1},
		{ctlFams, telemetry.ControllerActive, nil, 1},
	} {
		got, ok := metricValue(c.fams, c.name, c.labels)
		must.True(t, ok, must.Sprintf("%s%v not exported", c.name, c.labels))
		must.GreaterEq(t, c.min, got, must.Sprintf("%s%v", c.name, c.labels))
	}

	exported := seriesNames(nodeFams, ctlFams)
	queries := dashboardQueries(t, filepath.Join("..", "..", "dashboards", "saddlebag.json"))
	must.MapLen(t, len(queries), queries)
	must.Greater(t, 20, len(queries))
	var missing, where []string
	queried := map[string]bool{}
	for w, expr := range queries {
		names := queriedMetrics(expr)
		must.SliceNotEmpty(t, names, must.Sprintf("%s: no metric in %q", w, expr))
		for _, n := range names {
			queried[n] = true
			if !exported[n] {
				missing = append(missing, n)
				where = append(where, fmt.Sprintf("%s: %s", w, n))
			}
		}
	}
	sort.Strings(where)
	must.SliceEmpty(t, missing, must.Sprintf("the dashboard queries metrics the processes do not export:\n%s", strings.Join(where, "\n")))
	// And the dashboard shows the volume and controller metrics the
	// processes export (not the Go runtime's).
	var unshown []string
	for n := range exported {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
		if strings.HasPrefix(n, "saddlebag_") && !queried[n] && !queried[base+"_bucket"] && !queried[base] {
			unshown = append(unshown, n)
		}
	}
	sort.Strings(unshown)
	must.SliceEmpty(t, unshown, must.Sprintf("exported but on no panel: %v", unshown))
	t.Logf("dashboard: %d queries over %d metrics, all exported", len(queries), len(queried))
}

// TestMetricsAddrTaken: a --metrics-addr that cannot be bound is logged
// and the process goes on without metrics; an empty one serves none.
func TestMetricsAddrTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	defer ln.Close()
	var logs bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs})
	ctx, cancel := context.WithCancel(context.Background())
	sampled := false
	wait := startMetrics(ctx, ln.Addr().String(), log, func() { sampled = true })
	cancel()
	wait()
	must.StrContains(t, logs.String(), "metrics not served: cannot listen")
	must.False(t, sampled)
	logs.Reset()
	startMetrics(context.Background(), "", log, func() { sampled = true })()
	must.Eq(t, "", logs.String())
	must.False(t, sampled)
}
