package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/replication"
)

// Options sizes the run.
type Options struct {
	// Dir is where replica data and the baseline file live (one disk).
	Dir string
	// Binary is the saddlebag binary used to start replica servers.
	Binary string
	// SeqBytes is how much one sequential round writes.
	SeqBytes int64
	// SyncOps is how many 4 KiB write+flush pairs one latency round times.
	SyncOps int
	// Rounds is how many interleaved rounds each figure takes the median of.
	Rounds int
	// Only, when set, runs just these Sections.
	Only []string
	// ResyncBytes is how much is written while a replica is away in the
	// resync measurement.
	ResyncBytes int64
	// Depth is the second queue depth the sequential test is run at
	// (informational; the headline ratio is at depth 1).
	Depth int
	Log   hclog.Logger
}

// Sections are the parts of a run, in order; Options.Only picks some.
var Sections = []string{"device", "encryption", "resync", "fs", "failover"}

// Run measures and prints one line per figure to out.
func Run(ctx context.Context, out io.Writer, o Options) error {
	if o.Log == nil {
		o.Log = hclog.NewNullLogger()
	}
	want := func(name string) bool { return len(o.Only) == 0 || slices.Contains(o.Only, name) }
	var addrs []string
	for i := 0; i < 2; i++ {
		addr, stop, err := startReplica(o.Binary, filepath.Join(o.Dir, fmt.Sprintf("replica%d", i)))
		if err != nil {
			return err
		}
		defer stop()
		addrs = append(addrs, addr)
	}
	if want("device") {
		if err := runDevice(ctx, out, o, addrs); err != nil {
			return err
		}
	}
	if want("encryption") {
		if err := runEncryption(ctx, out, o, addrs); err != nil {
			return fmt.Errorf("encryption: %w", err)
		}
	}
	if want("resync") {
		if err := runResync(ctx, out, o, addrs[0]); err != nil {
			return fmt.Errorf("resync: %w", err)
		}
	}
	if want("fs") {
		if err := runFS(ctx, out, o, addrs); err != nil {
			return err
		}
	}
	if want("failover") {
		return runFailover(ctx, out, o)
	}
	return nil
}

// runDevice compares the replicated device with a local file: sequential
// throughput and synchronous 4 KiB write latency.
func runDevice(ctx context.Context, out io.Writer, o Options, addrs []string) error {
	cfg := replication.EngineConfig{Volume: "bench", Size: o.SeqBytes, Epoch: 1, Log: o.Log}
	for _, a := range addrs {
		cfg.Replicas = append(cfg.Replicas, replication.ReplicaConfig{Addr: a})
	}
	eng, err := replication.StartEngine(ctx, cfg)
	if err != nil {
		return err
	}
	defer eng.Close()
	local, err := os.OpenFile(filepath.Join(o.Dir, "local.img"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer local.Close()
	if err := local.Truncate(o.SeqBytes); err != nil {
		return err
	}
	dev := fileDevice{local}

	// Sequential 1 MiB writes, flush at the end. One unmeasured round
	// first allocates every file's blocks, so the rounds compare steady
	// state rather than the file system's block allocation.
	for _, w := range []writer{dev, eng} {
		if _, err := seqWrite(ctx, w, o.SeqBytes, 1); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	var seqRatio float64
	for _, depth := range []int{1, o.Depth} {
		var ratios []float64
		var localRates, replRates []float64
		for r := 0; r < o.Rounds; r++ {
			l, err := seqWrite(ctx, dev, o.SeqBytes, depth)
			if err != nil {
				return fmt.Errorf("local sequential write: %w", err)
			}
			e, err := seqWrite(ctx, eng, o.SeqBytes, depth)
			if err != nil {
				return fmt.Errorf("replicated sequential write: %w", err)
			}
			ratios = append(ratios, l.Seconds()/e.Seconds())
			localRates = append(localRates, mibPerSec(o.SeqBytes, l))
			replRates = append(replRates, mibPerSec(o.SeqBytes, e))
		}
		fmt.Fprintf(out, "# sequential 1 MiB writes, %d in flight, %d MiB per round, flush at the end, median of %d rounds: local %.0f MiB/s, 2 replicas %.0f MiB/s, ratio %.3f\n",
			depth, o.SeqBytes>>20, o.Rounds, median(localRates), median(replRates), median(ratios))
		if depth == 1 {
			seqRatio = median(ratios)
		}
	}
	fmt.Fprintf(out, "write_throughput_ratio %.3f\n", seqRatio)

	// 4 KiB write + flush latency.
	var localLat, replLat []time.Duration
	for r := 0; r < o.Rounds; r++ {
		l, err := syncWrites(ctx, dev, o.SyncOps)
		if err != nil {
			return fmt.Errorf("local sync writes: %w", err)
		}
		e, err := syncWrites(ctx, eng, o.SyncOps)
		if err != nil {
			return fmt.Errorf("replicated sync writes: %w", err)
		}
		localLat, replLat = append(localLat, l...), append(replLat, e...)
	}
	lp, ep := percentile(localLat, 50), percentile(replLat, 50)
	fmt.Fprintf(out, "# 4 KiB write+flush, %d ops: local p50 %s p99 %s, 2 replicas p50 %s p99 %s\n",
		len(localLat), lp, percentile(localLat, 99), ep, percentile(replLat, 99))
	fmt.Fprintf(out, "sync_write_p50_overhead_us %.1f\n", float64(ep-lp)/float64(time.Microsecond))
	return nil
}

// fileDevice is the baseline: the same calls on a local file.
type fileDevice struct{ f *os.File }

func (d fileDevice) WriteAt(_ context.Context, p []byte, off int64, fua bool) error {
	_, err := d.f.WriteAt(p, off)
	return err
}

func (d fileDevice) Flush(context.Context) error { return unix.Fdatasync(int(d.f.Fd())) }

type writer interface {
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	Flush(ctx context.Context) error
}

// seqWrite writes total bytes in 1 MiB writes at ascending offsets, with
// depth writes in flight (as a file system or nbdcopy keeps several), then
// flushes.
func seqWrite(ctx context.Context, w writer, total int64, depth int) (time.Duration, error) {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	var next atomic.Int64
	errs := make(chan error, depth)
	start := time.Now()
	for d := 0; d < depth; d++ {
		go func() {
			for {
				off := next.Add(int64(len(buf))) - int64(len(buf))
				if off >= total {
					errs <- nil
					return
				}
				if err := w.WriteAt(ctx, buf, off, false); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
	for d := 0; d < depth; d++ {
		err = errors.Join(err, <-errs)
	}
	if err != nil {
		return 0, err
	}
	if err := w.Flush(ctx); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func syncWrites(ctx context.Context, w writer, n int) ([]time.Duration, error) {
	buf := make([]byte, 4096)
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		buf[0] = byte(i)
		start := time.Now()
		if err := w.WriteAt(ctx, buf, int64(i%1024)*4096, false); err != nil {
			return nil, err
		}
		if err := w.Flush(ctx); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(start))
	}
	return lat, nil
}

func mibPerSec(n int64, d time.Duration) float64 { return float64(n) / float64(1<<20) / d.Seconds() }

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

var addrRE = regexp.MustCompile(`serving replicas: .*addr=(\S+)`)

// startReplica runs a replica server process and returns its address and a
// function that stops it (by PID) and waits for it.
func startReplica(binary, dir string) (string, func(), error) {
	return startReplicaAt(binary, dir, "127.0.0.1:0")
}

// startReplicaAt is startReplica on a given listen address.
func startReplicaAt(binary, dir, listen string) (string, func(), error) {
	cmd := exec.Command(binary, "replica", "--insecure", "--data-dir", dir, "--listen", listen)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() {
		cmd.Process.Signal(unix.SIGTERM)
		cmd.Wait()
	}
	s := bufio.NewScanner(stderr)
	for s.Scan() {
		if m := addrRE.FindStringSubmatch(s.Text()); m != nil {
			go io.Copy(io.Discard, stderr)
			return m[1], stop, nil
		}
	}
	stop()
	return "", nil, fmt.Errorf("replica server in %s exited before listening", dir)
}
