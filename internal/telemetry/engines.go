package telemetry

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/saddlebag/saddlebag/replication"
)

// engineCollector reads the running engines when the endpoint is
// scraped. It is unchecked (describes nothing): the volumes come and go.
type engineCollector struct{}

func (engineCollector) Describe(chan<- *prometheus.Desc) {}

var (
	volumeLabel = []string{"volume"}
	ioLabels    = []string{"volume", "op"}

	descIORequests = prometheus.NewDesc(VolumeIORequests, "I/O requests the volume's engine completed on this node, by op (read, write, flush, trim)", ioLabels, nil)
	descIOErrors   = prometheus.NewDesc(VolumeIOErrors, "I/O requests that failed (fenced, no replica, abandoned while held), by op", ioLabels, nil)
	descIOBytes    = prometheus.NewDesc(VolumeIOBytes, "bytes read, written or trimmed through the volume's engine, by op", ioLabels, nil)
	descIOLatency  = prometheus.NewDesc(VolumeIOLatency, "latency of completed I/O requests from the frontend's call to its completion on every in-sync replica, by op", ioLabels, nil)

	descInSync    = prometheus.NewDesc(VolumeReplicasInSync, "replicas that hold every acknowledged write", volumeLabel, nil)
	descWanted    = prometheus.NewDesc(VolumeReplicasWanted, "replicas the volume's spec asks for", volumeLabel, nil)
	descReplicas  = prometheus.NewDesc(VolumeReplicas, "replicas the primary serves, in sync or not", volumeLabel, nil)
	descResyncing = prometheus.NewDesc(VolumeResyncing, "replicas being resynced", volumeLabel, nil)
	descMinInSync = prometheus.NewDesc(VolumeMinInSync, "fewest in-sync replicas a write completes with", volumeLabel, nil)
	descRemaining = prometheus.NewDesc(VolumeResyncRemaining, "bytes replicas that are behind still lack (resync left to examine, or blocks their bitmap holds)", volumeLabel, nil)
	descRate      = prometheus.NewDesc(VolumeResyncRate, "summed rate of the running resyncs, bytes per second since each began", volumeLabel, nil)
	descEpoch     = prometheus.NewDesc(VolumeEpoch, "the primary's epoch (its lease's lock index)", volumeLabel, nil)
	descSize      = prometheus.NewDesc(VolumeSize, "the volume's size", volumeLabel, nil)
	descHeld      = prometheus.NewDesc(VolumeHeld, "1 while I/O is held because the primary lease is unconfirmed", volumeLabel, nil)
	descFenced    = prometheus.NewDesc(VolumeFenced, "1 when this node's engine was fenced (a newer primary took over) and not yet closed", volumeLabel, nil)
	descHolds     = prometheus.NewDesc(VolumeLeaseHolds, "times I/O was held because the primary lease could not be confirmed", volumeLabel, nil)
	descFencings  = prometheus.NewDesc(VolumeFencings, "times this node's primary of the volume was fenced", volumeLabel, nil)
	descDrops     = prometheus.NewDesc(VolumeReplicaDrops, "in-sync replicas dropped from the in-sync set (error, timeout, crash)", volumeLabel, nil)
)

func (engineCollector) Collect(ch chan<- prometheus.Metric) {
	// A volume's gauges come from its newest engine here (an older one
	// may linger fenced for a moment); its counters add up every engine
	// it had in this process.
	byVolume := map[string][]*replication.EngineMetrics{}
	var order []string
	for _, e := range replication.RunningEngines() {
		m := e.Metrics()
		if byVolume[m.Volume] == nil {
			order = append(order, m.Volume)
		}
		byVolume[m.Volume] = append(byVolume[m.Volume], &m)
	}
	retired := replication.RetiredTotals()
	for v := range retired {
		if byVolume[v] == nil {
			order = append(order, v)
		}
	}
	sort.Strings(order)
	gauge := func(d *prometheus.Desc, v float64, vol string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, vol)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, vol := range order {
		engines := byVolume[vol]
		tot := retired[vol]
		var cur *replication.EngineMetrics
		for _, m := range engines {
			tot.Add(m.Totals)
			if cur == nil || m.Epoch > cur.Epoch || (cur.Fenced && !m.Fenced) {
				cur = m
			}
		}
		if cur != nil {
			gauge(descInSync, float64(cur.InSync), vol)
			gauge(descWanted, float64(cur.Want), vol)
			if cur.Detailed {
				gauge(descReplicas, float64(cur.Replicas), vol)
				gauge(descRemaining, float64(cur.ResyncRemainingBytes), vol)
				gauge(descRate, cur.ResyncBytesPerSec, vol)
			}
			gauge(descResyncing, float64(cur.Resyncing), vol)
			gauge(descMinInSync, float64(cur.MinInSync), vol)
			gauge(descEpoch, float64(cur.Epoch), vol)
			gauge(descSize, float64(cur.Size), vol)
			gauge(descHeld, b2f(cur.Held), vol)
			gauge(descFenced, b2f(cur.Fenced), vol)
		}
		counter(descHolds, tot.LeaseHolds, vol)
		counter(descFencings, tot.Fencings, vol)
		counter(descDrops, tot.ReplicaDrops, vol)
		for _, op := range replication.Ops {
			s := tot.IO[op]
			counter(descIORequests, s.Ops, vol, op.String())
			counter(descIOErrors, s.Errors, vol, op.String())
			counter(descIOBytes, s.Bytes, vol, op.String())
			buckets := make(map[float64]uint64, len(replication.LatencyBuckets))
			var cum uint64
			for i, le := range replication.LatencyBuckets {
				cum += s.Buckets[i]
				buckets[le] = cum
			}
			// The count is the buckets' sum (not Ops, read a moment
			// apart), so +Inf and the count agree.
			count := cum + s.Buckets[len(replication.LatencyBuckets)]
			ch <- prometheus.MustNewConstHistogram(descIOLatency, count, s.Seconds, buckets, vol, op.String())
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
