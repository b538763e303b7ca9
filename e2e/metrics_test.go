package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/saddlebag/saddlebag/e2e/cluster"
)

// nodeMetricsURL is where `saddlebag node` serves its metrics by default
// (--metrics-addr): loopback, so the test scrapes it from inside each
// node's network namespace, as an agent on the host would.
const nodeMetricsURL = "http://127.0.0.1:7420/v1/metrics?format=prometheus"

// metricSample is one scrape's view of the volume's replica counts on
// one node (only the volume's primary exports them).
type metricSample struct {
	at             time.Time
	node           string
	inSync, wanted int
}

// metricsWatch scrapes every node's metrics every interval and keeps the
// samples of one volume.
type metricsWatch struct {
	t0     time.Time
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	samples []metricSample
	errs    int
}

func watchVolumeMetrics(ctx context.Context, nodes []*cluster.Node, volume string, interval time.Duration) *metricsWatch {
	ctx, cancel := context.WithCancel(ctx)
	w := &metricsWatch{t0: time.Now(), cancel: cancel, done: make(chan struct{})}
	inSyncRE := regexp.MustCompile(`(?m)^saddlebag_volume_replicas_in_sync\{volume="` + regexp.QuoteMeta(volume) + `"\} (\S+)$`)
	wantedRE := regexp.MustCompile(`(?m)^saddlebag_volume_replicas_wanted\{volume="` + regexp.QuoteMeta(volume) + `"\} (\S+)$`)
	go func() {
		defer close(w.done)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for {
			var wg sync.WaitGroup
			for _, nd := range nodes {
				wg.Go(func() {
					sctx, scancel := context.WithTimeout(ctx, interval)
					defer scancel()
					out, err := nd.Exec(sctx, "curl", "-sf", "--max-time", "1", nodeMetricsURL)
					at := time.Now()
					w.mu.Lock()
					defer w.mu.Unlock()
					if err != nil {
						w.errs++ // a dead node, or one restarting
						return
					}
					is, ws := inSyncRE.FindStringSubmatch(out), wantedRE.FindStringSubmatch(out)
					if is == nil || ws == nil {
						return // not the volume's primary
					}
					in, _ := strconv.ParseFloat(is[1], 64)
					want, _ := strconv.ParseFloat(ws[1], 64)
					w.samples = append(w.samples, metricSample{at: at, node: nd.Name, inSync: int(in), wanted: int(want)})
				})
			}
			wg.Wait()
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
	return w
}

func (w *metricsWatch) stop() {
	w.cancel()
	<-w.done
}

// seen returns the samples so far, in time order.
func (w *metricsWatch) seen() []metricSample {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]metricSample, len(w.samples))
	copy(out, w.samples)
	return out
}

// changes renders the samples where the value (or the node serving it)
// changed, for the test's output.
func (w *metricsWatch) changes() string {
	var b strings.Builder
	var last metricSample
	for i, s := range w.seen() {
		if i == 0 || s.node != last.node || s.inSync != last.inSync || s.wanted != last.wanted {
			fmt.Fprintf(&b, "  +%6.1fs %s saddlebag_volume_replicas_in_sync=%d wanted=%d\n", s.at.Sub(w.t0).Seconds(), s.node, s.inSync, s.wanted)
		}
		last = s
	}
	return b.String()
}

// dropAndRecovery reports whether the samples show the in-sync count at
// wanted, then below it, then back at wanted, and when.
func dropAndRecovery(samples []metricSample) (dropped, recovered time.Time, ok bool) {
	phase := 0
	for _, s := range samples {
		switch {
		case phase == 0 && s.inSync == s.wanted:
			phase = 1
		case phase == 1 && s.inSync < s.wanted:
			phase, dropped = 2, s.at
		case phase == 2 && s.inSync == s.wanted:
			return dropped, s.at, true
		}
	}
	return dropped, recovered, false
}

// TestDropAndRecovery: the judgement the failover test makes on the
// scraped samples.
func TestDropAndRecovery(t *testing.T) {
	at := func(s int) time.Time { return time.Unix(int64(s), 0) }
	for _, c := range []struct {
		in   []int
		want bool
	}{
		{[]int{2, 2, 1, 1, 2}, true},
		{[]int{2, 1}, false},
		{[]int{1, 2}, false},
		{[]int{2, 2, 2}, false},
		{[]int{1, 2, 1, 2}, true},
	} {
		var ss []metricSample
		for i, v := range c.in {
			ss = append(ss, metricSample{at: at(i), inSync: v, wanted: 2})
		}
		_, _, ok := dropAndRecovery(ss)
		if ok != c.want {
			t.Errorf("%v: got %v, want %v", c.in, ok, c.want)
		}
	}
}

// runStatus runs `saddlebag status` against the cluster's Consul, with
// the operator's environment (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN).
func runStatus(ctx context.Context, c *cluster.Cluster, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, append([]string{"status"}, args...)...)
	cmd.Env = append(os.Environ(), c.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("saddlebag status %v: %w: %s", args, err, out)
	}
	return string(out), nil
}

// statusWatch runs `saddlebag status VOLUME` every interval and keeps the
// first output that shows a replica resyncing.
type statusWatch struct {
	cancel    context.CancelFunc
	done      chan struct{}
	resyncing string
	reads     int
}

func watchStatus(ctx context.Context, c *cluster.Cluster, bin, volume string, interval time.Duration) *statusWatch {
	ctx, cancel := context.WithCancel(ctx)
	w := &statusWatch{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			out, err := runStatus(ctx, c, bin, volume)
			w.reads++
			if err == nil && strings.Contains(out, " resyncing ") {
				w.resyncing = out
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(interval):
			}
		}
	}()
	return w
}

// stop ends the watch and returns the output that showed the resync
// ("" if none did) and how many times status ran.
func (w *statusWatch) stop() (string, int) {
	w.cancel()
	<-w.done
	return w.resyncing, w.reads
}
