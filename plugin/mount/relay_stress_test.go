package mount

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/frontend/fuse"
)

// slowDevice delays each request by up to max, as replicas on a loaded
// host do, so that many requests are in flight through the relay at once.
type slowDevice struct {
	*memDevice
	max time.Duration
}

func (d slowDevice) pause() { time.Sleep(time.Duration(rand.Int64N(int64(d.max)))) }
func (d slowDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.pause()
	return d.memDevice.ReadAt(ctx, p, off)
}
func (d slowDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	d.pause()
	return d.memDevice.WriteAt(ctx, p, off, fua)
}
func (d slowDevice) Flush(ctx context.Context) error { d.pause(); return d.memDevice.Flush(ctx) }

// TestRelayedStageUnderLoad: a file system on a relayed FUSE connection
// (the one a descriptor keeper can hand over) under what initdb and a
// database do to it at once (many small files each fsynced, large
// sequential writes, reads of what was written) keeps making progress.
// A request lost or stuck between /dev/fuse, the relay and go-fuse stops
// the workload; the test then fails with the connection's state and
// every goroutine's stack instead of hanging.
func TestRelayedStageUnderLoad(t *testing.T) {
	requireRoot(t)
	dev := slowDevice{memDevice: newMemDevice(256 << 20), max: 3 * time.Millisecond}
	mountFUSE := fuse.NewHandoff
	if os.Getenv("SADDLEBAG_RELAY_STRESS_DIRECT") != "" {
		mountFUSE = fuse.New
	}
	m, req, _ := fuseStageWith(t, mountFUSE, dev)

	duration := 20 * time.Second
	if s := os.Getenv("SADDLEBAG_RELAY_STRESS"); s != "" {
		var err error
		duration, err = time.ParseDuration(s)
		must.NoError(t, err)
	}
	var progress atomic.Int64
	var stop atomic.Bool
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	// Small files, each fsynced, as initdb and a WAL do.
	for w := range 6 {
		wg.Go(func() {
			dir := filepath.Join(req.StagingPath, fmt.Sprintf("small%d", w))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				errs <- err
				return
			}
			buf := make([]byte, 8192)
			for i := 0; !stop.Load(); i++ {
				f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%d", i%200)))
				if err == nil {
					_, err = f.Write(buf[:1+rand.IntN(len(buf))])
					if err == nil {
						err = f.Sync()
					}
					f.Close()
				}
				if err != nil {
					errs <- err
					return
				}
				progress.Add(1)
			}
		})
	}
	// Large sequential writes and reads back, as a checkpoint and a scan.
	for w := range 2 {
		wg.Go(func() {
			p := filepath.Join(req.StagingPath, fmt.Sprintf("big%d", w))
			buf := make([]byte, 4<<20)
			for !stop.Load() {
				f, err := os.Create(p)
				for i := 0; err == nil && i < 8; i++ {
					_, err = f.Write(buf)
				}
				if err == nil {
					err = f.Sync()
				}
				if err == nil {
					_, err = f.ReadAt(buf, 0)
				}
				if f != nil {
					f.Close()
				}
				if err != nil {
					errs <- err
					return
				}
				progress.Add(1)
			}
		})
	}
	deadline := time.Now().Add(duration)
	last, lastChange := int64(-1), time.Now()
	for time.Now().Before(deadline) {
		select {
		case err := <-errs:
			stop.Store(true)
			t.Fatalf("workload: %v", err)
		case <-time.After(time.Second):
		}
		if p := progress.Load(); p != last {
			last, lastChange = p, time.Now()
			continue
		}
		if time.Since(lastChange) > 15*time.Second {
			var sb strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&sb, 2)
			waiting, _ := os.ReadFile(filepath.Join(fuse.ConnectionsDir, fmt.Sprint(m.Connection()), "waiting"))
			t.Logf("stalled; connection %d waiting=%s\n%s", m.Connection(), strings.TrimSpace(string(waiting)), sb.String())
			stop.Store(true)
			_ = m.Abort()
			t.Fatalf("no operation completed for 15 s through the relayed connection (%d completed before)", last)
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d operations in %s", progress.Load(), duration)
	must.Positive(t, progress.Load())
}
