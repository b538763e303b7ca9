package replication

import (
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Counters for operators (internal/telemetry exports them). The hot path
// only adds to atomics: per I/O, two clock reads, three atomic adds and one
// bucket increment; no allocation and no lock. Everything else a metric
// needs is read from the engine when it is sampled (EngineMetrics).

// LatencyBuckets are the upper bounds, in seconds, of the latency
// histograms' buckets; one more bucket counts what is above the last.
var LatencyBuckets = [...]float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// latencyBounds are LatencyBuckets in nanoseconds.
var latencyBounds = func() (b [len(LatencyBuckets)]int64) {
	for i, s := range LatencyBuckets {
		b[i] = int64(s * 1e9)
	}
	return b
}()

// IOOp names a kind of application request in IOStats.
type IOOp int

// The operations counted.
const (
	OpRead IOOp = iota
	OpWrite
	OpFlush
	OpTrim
	numOps
)

// String is the op's metric label.
func (o IOOp) String() string {
	return [...]string{"read", "write", "flush", "trim"}[o]
}

// Ops lists every IOOp.
var Ops = [...]IOOp{OpRead, OpWrite, OpFlush, OpTrim}

// ioCounter counts one kind of request.
type ioCounter struct {
	ops, errs, bytes, nanos atomic.Uint64
	buckets                 [len(LatencyBuckets) + 1]atomic.Uint64
}

// done counts a request that started at start and moved n bytes (0 for
// flushes); a failed one counts as an error and moves nothing.
func (c *ioCounter) done(start time.Time, n int64, err *error) {
	d := time.Since(start)
	if *err != nil {
		if !errors.Is(*err, ErrOutOfRange) {
			c.errs.Add(1)
		}
		return
	}
	ns := int64(d)
	i := 0
	for i < len(latencyBounds) && ns > latencyBounds[i] {
		i++
	}
	c.buckets[i].Add(1)
	c.ops.Add(1)
	c.bytes.Add(uint64(n))
	c.nanos.Add(uint64(ns))
}

// IOStats are one kind of request's totals since the engine started:
// completed requests, bytes they moved, their summed latency, and how
// many of them fell in each latency bucket (not cumulative; the last is
// above every bound); failed requests are counted apart.
type IOStats struct {
	Ops, Errors, Bytes uint64
	Seconds            float64
	Buckets            [len(LatencyBuckets) + 1]uint64
}

func (c *ioCounter) snapshot() IOStats {
	var s IOStats
	// Buckets first: a request counted between the reads shows up in Ops
	// later rather than in a bucket Ops does not include.
	for i := range c.buckets {
		s.Buckets[i] = c.buckets[i].Load()
	}
	s.Ops, s.Errors, s.Bytes = c.ops.Load(), c.errs.Load(), c.bytes.Load()
	s.Seconds = time.Duration(c.nanos.Load()).Seconds()
	return s
}

// EngineMetrics is what the engine counted and what it looks like now,
// for metrics. It takes no lock the write path waits on for long.
type EngineMetrics struct {
	Volume    string
	Epoch     uint64
	Size      int64
	Want      int // replicas the volume should have (EngineConfig.Want)
	Replicas  int // replicas the engine serves (in sync or not)
	InSync    int
	Resyncing int
	MinInSync int
	Fenced    bool
	Held      bool
	// ResyncRemainingBytes is what replicas that are behind still lack:
	// for a running resync, what it has yet to examine; for a replica
	// waiting for one, the blocks its bitmap holds (0 when its history is
	// unknown). ResyncBytesPerSec sums the running resyncs' rates.
	ResyncRemainingBytes int64
	ResyncBytesPerSec    float64
	// Detailed is false when the replica details (Replicas, the resync
	// figures) could not be read without waiting: a change of the in-sync
	// set was being recorded. The counts from the write path are current.
	Detailed bool
	Totals
}

// Totals are an engine's counters since it started.
type Totals struct {
	LeaseHolds, Fencings, ReplicaDrops uint64
	IO                                 [numOps]IOStats // by IOOp
}

// Add adds o's counts to t.
func (t *Totals) Add(o Totals) {
	t.LeaseHolds += o.LeaseHolds
	t.Fencings += o.Fencings
	t.ReplicaDrops += o.ReplicaDrops
	for i := range t.IO {
		a, b := &t.IO[i], o.IO[i]
		a.Ops, a.Errors, a.Bytes, a.Seconds = a.Ops+b.Ops, a.Errors+b.Errors, a.Bytes+b.Bytes, a.Seconds+b.Seconds
		for j := range a.Buckets {
			a.Buckets[j] += b.Buckets[j]
		}
	}
}

func (e *Engine) totals() Totals {
	t := Totals{LeaseHolds: e.stats.holds.Load(), ReplicaDrops: e.stats.drops.Load()}
	if e.fenced.Load() {
		t.Fencings = 1 // an engine is fenced once, for good
	}
	for _, op := range Ops {
		t.IO[op] = e.io[op].snapshot()
	}
	return t
}

// Metrics returns the engine's counters and state for metrics.
func (e *Engine) Metrics() EngineMetrics {
	m := EngineMetrics{Volume: e.cfg.Volume, Epoch: e.cfg.Epoch, Size: e.cfg.Size, Want: e.cfg.Want, MinInSync: e.cfg.MinInSync,
		Fenced: e.fenced.Load(), Held: e.hold.Load() != nil, Totals: e.totals()}
	e.order.Lock()
	set := e.targets
	e.order.Unlock()
	m.InSync, m.Resyncing = len(set.inSync), len(set.resyncing)
	// stateMu is held while an in-sync change is recorded (a Consul
	// write that may take long when Consul is slow): never wait for it.
	if e.stateMu.TryLock() {
		m.Detailed = true
		m.Replicas = len(e.peers)
		for _, p := range e.peers {
			switch {
			case p.state == StateInSync:
			case p.resync != nil && !p.resync.finished.Load():
				st := p.resync.status()
				m.ResyncRemainingBytes += max(0, st.TotalBytes-st.DoneBytes)
				m.ResyncBytesPerSec += st.BytesPerSec
			case p.dirty != nil:
				m.ResyncRemainingBytes += p.dirty.Count() * BlockSize
			}
		}
		e.stateMu.Unlock()
	}
	if m.Want == 0 {
		m.Want = m.Replicas
	}
	return m
}

// running is every engine of this process that was started and not yet
// closed, and the totals of those closed, by volume, for metrics.
var running struct {
	mu      sync.Mutex
	engines []*Engine
	retired map[string]Totals
}

func registerEngine(e *Engine) {
	running.mu.Lock()
	running.engines = append(running.engines, e)
	running.mu.Unlock()
}

func unregisterEngine(e *Engine) {
	running.mu.Lock()
	defer running.mu.Unlock()
	n := len(running.engines)
	running.engines = slices.DeleteFunc(running.engines, func(x *Engine) bool { return x == e })
	if len(running.engines) == n {
		return // closed before
	}
	if running.retired == nil {
		running.retired = map[string]Totals{}
	}
	t := running.retired[e.cfg.Volume]
	t.Add(e.totals())
	running.retired[e.cfg.Volume] = t
}

// RetiredTotals returns, by volume, the summed totals of the engines this
// process closed: with those of the running ones, a volume's counters
// never go back while the process lives, however often its primary
// moves away and back.
func RetiredTotals() map[string]Totals {
	running.mu.Lock()
	defer running.mu.Unlock()
	return maps.Clone(running.retired)
}

// RunningEngines returns the engines this process started and has not
// closed (a fenced engine stays until it is closed), oldest first.
func RunningEngines() []*Engine {
	running.mu.Lock()
	defer running.mu.Unlock()
	return slices.Clone(running.engines)
}

// Volume returns the engine's volume id.
func (e *Engine) Volume() string { return e.cfg.Volume }
