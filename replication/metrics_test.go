package replication

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

// TestEngineMetrics: the counters follow what the engine did: I/O by
// kind with bytes and a latency bucket per request, a replica dropped and
// resynced (remaining bytes while it is behind), a hold, a fencing; and
// the engine is listed as running until it is closed.
func TestEngineMetrics(t *testing.T) {
	r1, r2 := startTestReplica(t, t.TempDir()), startTestReplica(t, t.TempDir())
	e := startTestEngine(t, "metrics", 64<<20, 1, nil, r1, r2)
	must.True(t, slices.Contains(RunningEngines(), e))
	ctx := context.Background()

	m := e.Metrics()
	must.Eq(t, "metrics", m.Volume)
	must.Eq(t, 2, m.InSync)
	must.Eq(t, 2, m.Replicas)
	must.Eq(t, 2, m.Want) // defaults to the replicas served
	must.True(t, m.Detailed)

	buf := bytes.Repeat([]byte{7}, 1<<20)
	for i := range int64(3) {
		must.NoError(t, e.WriteAt(ctx, buf, i<<20, false))
	}
	must.NoError(t, e.ReadAt(ctx, buf[:4096], 0))
	must.NoError(t, e.Flush(ctx))
	must.NoError(t, e.Trim(ctx, 8<<20, 1<<20))
	must.Error(t, e.WriteAt(ctx, buf, 64<<20, false)) // out of range: not an I/O error
	m = e.Metrics()
	w := m.IO[OpWrite]
	must.Eq(t, uint64(3), w.Ops)
	must.Eq(t, uint64(3<<20), w.Bytes)
	must.Eq(t, uint64(0), w.Errors)
	must.Positive(t, w.Seconds)
	var inBuckets uint64
	for _, n := range w.Buckets {
		inBuckets += n
	}
	must.Eq(t, w.Ops, inBuckets)
	must.Eq(t, uint64(1), m.IO[OpRead].Ops)
	must.Eq(t, uint64(4096), m.IO[OpRead].Bytes)
	must.Eq(t, uint64(1), m.IO[OpFlush].Ops)
	must.Eq(t, uint64(1), m.IO[OpTrim].Ops)
	must.Eq(t, uint64(1<<20), m.IO[OpTrim].Bytes)

	// A replica stops: dropped at the next write; what it misses is what
	// resync has left to do.
	r2.stop()
	must.NoError(t, e.WriteAt(ctx, buf, 4<<20, false))
	m = e.Metrics()
	must.Eq(t, 1, m.InSync)
	must.Eq(t, uint64(1), m.ReplicaDrops)
	must.Eq(t, int64(1<<20), m.ResyncRemainingBytes)
	r2 = startTestReplicaAt(t, r2.store.Dir(), r2.addr)
	waitInSync(t, e, 2)
	m = e.Metrics()
	must.Eq(t, 2, m.InSync)
	must.Eq(t, int64(0), m.ResyncRemainingBytes)

	e.Hold()
	e.Hold() // one hold, however often asked
	must.True(t, e.Metrics().Held)
	e.Release()
	m = e.Metrics()
	must.False(t, m.Held)
	must.Eq(t, uint64(1), m.LeaseHolds)

	e.Fence(errors.New("test"))
	m = e.Metrics()
	must.True(t, m.Fenced)
	must.Eq(t, uint64(1), m.Fencings)
	must.Error(t, e.WriteAt(ctx, buf, 0, false))
	must.Eq(t, uint64(1), e.Metrics().IO[OpWrite].Errors)

	e.Close()
	must.False(t, slices.Contains(RunningEngines(), e))
}

// TestLatencyBuckets: a request lands in the first bucket whose bound
// is at or above its latency, and above every bound in the last.
func TestLatencyBuckets(t *testing.T) {
	var c ioCounter
	var ok error
	now := time.Now()
	c.done(now, 1, &ok) // ~0: first bucket
	c.done(now.Add(-3*time.Millisecond), 1, &ok)
	c.done(now.Add(-time.Minute), 1, &ok)
	s := c.snapshot()
	must.Eq(t, uint64(1), s.Buckets[0])
	must.Eq(t, uint64(1), s.Buckets[5]) // (2.5ms, 5ms]
	must.Eq(t, uint64(1), s.Buckets[len(LatencyBuckets)])
	must.Eq(t, uint64(3), s.Ops)
}

// TestRetiredTotals: a closed engine's counters stay with its volume.
func TestRetiredTotals(t *testing.T) {
	r := startTestReplica(t, t.TempDir())
	e := startTestEngine(t, "retired", 16<<20, 1, nil, r)
	must.NoError(t, e.WriteAt(context.Background(), make([]byte, 8192), 0, false))
	before := RetiredTotals()["retired"].IO[OpWrite]
	e.Close()
	e.Close()
	after := RetiredTotals()["retired"].IO[OpWrite]
	must.Eq(t, before.Ops+1, after.Ops)
	must.Eq(t, before.Bytes+8192, after.Bytes)
}

// TestIOCountingAllocatesNothing: counting a request on the I/O path
// allocates nothing, for a success and a failure alike.
func TestIOCountingAllocatesNothing(t *testing.T) {
	var c ioCounter
	var ok error
	fail := errors.New("failed")
	allocs := testing.AllocsPerRun(1000, func() {
		c.done(time.Now(), 4096, &ok)
		c.done(time.Now(), 4096, &fail)
	})
	must.Eq(t, 0.0, allocs)
}

func BenchmarkIOCounter(b *testing.B) {
	var c ioCounter
	var ok error
	for b.Loop() {
		c.done(time.Now(), 4096, &ok)
	}
}
