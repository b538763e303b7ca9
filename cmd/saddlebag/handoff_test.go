package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"

	"github.com/saddlebag/saddlebag/internal/fdkeeper"
	"github.com/saddlebag/saddlebag/internal/testcluster"
)

var (
	adoptedRE    = regexp.MustCompile(`volume adopted from the previous node process: serving again: .*volume_id=(\S+)`)
	parkedRE     = regexp.MustCompile(`volume parked in the descriptor keeper`)
	handedRE     = regexp.MustCompile(`volume handed over: its I/O waits in the kernel`)
	keepingRE    = regexp.MustCompile(`keeping descriptors`)
	hoRecordSize = 4096
)

// volumeWriter appends 4 KiB records (its sequence number first) to a
// file on a staged volume, fdatasyncing each, and counts what was
// acknowledged.
type volumeWriter struct {
	path   string
	acked  atomic.Uint64
	maxLat atomic.Int64
	mu     sync.Mutex
	err    error
	stop   atomic.Bool
	done   chan struct{}
}

func startVolumeWriter(t *testing.T, path string) *volumeWriter {
	w := &volumeWriter{path: path, done: make(chan struct{})}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	must.NoError(t, err)
	go func() {
		defer close(w.done)
		defer f.Close()
		buf := make([]byte, hoRecordSize)
		for seq := uint64(1); !w.stop.Load(); seq++ {
			binary.LittleEndian.PutUint64(buf, seq)
			t0 := time.Now()
			_, err := f.Write(buf)
			if err == nil {
				err = f.Sync()
			}
			if err != nil {
				w.mu.Lock()
				w.err = fmt.Errorf("record %d: %w", seq, err)
				w.mu.Unlock()
				return
			}
			w.maxLat.Store(max(w.maxLat.Load(), int64(time.Since(t0))))
			w.acked.Store(seq)
		}
	}()
	return w
}

func (w *volumeWriter) finish(t *testing.T) {
	w.stop.Store(true)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	must.NoError(t, w.err, must.Sprintf("writer on %s", w.path))
	data, err := os.ReadFile(w.path)
	must.NoError(t, err)
	n := w.acked.Load()
	must.GreaterEq(t, int(n)*hoRecordSize, len(data), must.Sprintf("%s lost acknowledged records", w.path))
	for i := uint64(0); i < n; i++ {
		must.Eq(t, i+1, binary.LittleEndian.Uint64(data[int(i)*hoRecordSize:]), must.Sprintf("%s record %d", w.path, i+1))
	}
}

// waitProgress waits for every writer to acknowledge more records, and
// returns how long that took.
func waitProgress(t *testing.T, ws []*volumeWriter, what string) time.Duration {
	t0 := time.Now()
	for _, w := range ws {
		from := w.acked.Load()
		must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
			w.mu.Lock()
			failed := w.err != nil
			w.mu.Unlock()
			return failed || w.acked.Load() > from+2
		}), wait.Timeout(60*time.Second), wait.Gap(10*time.Millisecond)), must.Sprintf("%s: writes on %s never resumed", what, w.path))
		w.mu.Lock()
		must.NoError(t, w.err, must.Sprintf("%s: writer on %s", what, w.path))
		w.mu.Unlock()
	}
	return time.Since(t0)
}

// TestNodeRestartKeepsVolumesServing is issue 13 on real processes:
// `saddlebag keeper`, a `saddlebag node` with --keeper-socket and a
// controller, against a Consul agent. Two volumes are staged (ext4 on a
// loop device on FUSE), each with a writer fsyncing records. The node is
// SIGKILLed and started again (a crash), then stopped with SIGTERM and
// started again (an upgrade): no write or fsync fails on either volume,
// both are adopted at a higher epoch, and every acknowledged record is
// there afterwards. Then the keeper itself is restarted under a running
// node: the node parks the volumes in it again.
func TestNodeRestartKeepsVolumesServing(t *testing.T) {
	requireRoot(t)
	dev := testcluster.Dev(t, testcluster.Options{})
	dir := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, dir) })
	stateDir := filepath.Join(dir, "n1", "csi")
	vols := []string{"ho-a", "ho-b"}
	recoverOnFailure(t, dir, stateDir, vols...)
	keeperSock := filepath.Join(dir, "keeper", "keeper.sock")
	keeperArgs := []string{"keeper", "--socket", keeperSock}
	keeper := startProc(t, keeperArgs...)
	keeper.waitLine(t, keepingRE, 10*time.Second)

	sock := filepath.Join(dir, "n1.sock")
	nodeArgs := func(listen string) []string {
		return []string{"node", "--node", "n1", "--data-dir", filepath.Join(dir, "n1", "data"), "--listen", listen,
			"--consul-addr", dev.HTTPAddr, "--ttl", "3s", "--lock-delay", "10s", "--log-level", "debug",
			"--csi-endpoint", "unix://" + sock, "--csi-state-dir", stateDir, "--keeper-socket", keeperSock}
	}
	n1 := startProc(t, nodeArgs("127.0.0.1:0")...)
	addr := n1.waitLine(t, replicaAddrRE, 10*time.Second)[1]
	n1.waitLine(t, csiServingRE, 30*time.Second)
	c1, ctlSock := startController(t, dev.HTTPAddr, "c1", dir, "--ttl", "3s")
	c1.waitLine(t, activeControlRE, 30*time.Second)
	c := consulClient(t, dev.HTTPAddr)
	waitHealthyNodes(t, c, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ctl := csi.NewControllerClient(dialCSI(t, ctlSock))
	node := csi.NewNodeClient(dialCSI(t, sock))
	var writers []*volumeWriter
	epochs := map[string]uint64{}
	for _, v := range vols {
		_, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: v, Parameters: map[string]string{"replicas": "1"},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
		must.NoError(t, err)
		_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: v, NodeId: "n1", VolumeCapability: swCap})
		must.NoError(t, err)
		staging := filepath.Join(dir, "staging", v)
		_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v, StagingTargetPath: staging, VolumeCapability: swCap})
		must.NoError(t, err)
		n1.waitLine(t, parkedRE, 10*time.Second)
		p, err := c.ReadPrimary(ctx, v)
		must.NoError(t, err)
		epochs[v] = p.Epoch
		writers = append(writers, startVolumeWriter(t, filepath.Join(staging, "records")))
	}
	waitProgress(t, writers, "at start")
	kc := fdkeeper.Client{Path: keeperSock}
	names, err := kc.Names()
	must.NoError(t, err)
	must.Eq(t, vols, names)

	// A crash: SIGKILL, and the next process at once (as Nomad's restart
	// would, after its delay).
	killed := time.Now()
	n1.kill()
	n2 := startProc(t, nodeArgs(addr)...)
	for range vols {
		n2.waitLine(t, adoptedRE, 60*time.Second)
	}
	crash := time.Since(killed) + waitProgress(t, writers, "after a SIGKILL")
	for _, v := range vols {
		p, err := c.ReadPrimary(ctx, v)
		must.NoError(t, err)
		must.Greater(t, epochs[v], p.Epoch, must.Sprintf("%s adopted without a new epoch", v))
		epochs[v] = p.Epoch
	}

	// A graceful stop (an upgrade): hand over, then the next process.
	stopped := time.Now()
	n2.stop()
	must.Len(t, len(vols), n2.linesMatching(handedRE))
	n3 := startProc(t, nodeArgs(addr)...)
	for range vols {
		n3.waitLine(t, adoptedRE, 60*time.Second)
	}
	graceful := time.Since(stopped) + waitProgress(t, writers, "after a graceful stop")
	for _, v := range vols {
		p, err := c.ReadPrimary(ctx, v)
		must.NoError(t, err)
		must.Greater(t, epochs[v], p.Epoch)
	}

	// The keeper restarted: the node parks the volumes there again.
	keeper.stop()
	keeper = startProc(t, keeperArgs...)
	keeper.waitLine(t, keepingRE, 10*time.Second)
	must.Wait(t, wait.InitialSuccess(wait.BoolFunc(func() bool {
		names, err := kc.Names()
		return err == nil && len(names) == len(vols)
	}), wait.Timeout(20*time.Second), wait.Gap(100*time.Millisecond)), must.Sprint("the node never parked its volumes in the restarted keeper"))

	var maxLat time.Duration
	for _, w := range writers {
		w.finish(t)
		maxLat = max(maxLat, time.Duration(w.maxLat.Load()))
	}
	fmt.Printf("node_sigkill_resume_seconds %.2f\nnode_graceful_resume_seconds %.2f\nnode_restart_max_fsync_seconds %.2f\n",
		crash.Seconds(), graceful.Seconds(), maxLat.Seconds())

	for _, v := range vols {
		_, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v, StagingTargetPath: filepath.Join(dir, "staging", v)})
		must.NoError(t, err)
		_, err = ctl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: v, NodeId: "n1"})
		must.NoError(t, err)
		_, err = ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v})
		must.NoError(t, err)
	}
	names, err = kc.Names()
	must.NoError(t, err)
	must.SliceEmpty(t, names, must.Sprint("unstaged volumes are still parked in the keeper"))
}

// linesMatching returns the stderr lines so far that match re.
func (p *proc) linesMatching(re *regexp.Regexp) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, l := range p.lines {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}
