package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/consul/api"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/internal/ctxutil"
	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin/mount"
)

// FailoverLockDelay is the session lock-delay the failover figure is
// measured with: the node agent's default (`saddlebag node --lock-delay`).
const FailoverLockDelay = 5 * time.Second

// failoverTTL is the agents' check TTL; the killed node's session dies by
// serfHealth, so the TTL does not bound the figure.
const failoverTTL = 10 * time.Second

const failoverVolume = "failover"

// failoverBlockCap is raw block access for a single writer.
var failoverBlockCap = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}

// runFailover measures storage failover on a real Consul cluster (a server
// and one client agent per node, each node on its own loopback address),
// through the CSI path as Nomad drives it: a `saddlebag controller`
// creates a 2-replica volume with its replicas on nodes A and B, both
// `saddlebag node` processes serving the CSI node service; A stages it
// (its CSI node plugin takes the primary lease and serves the volume as
// a block device), and B's NodeStageVolume is already waiting for the
// lease. Both of A's processes (its Consul agent and its saddlebag node,
// with A's replica) are SIGKILLed, and the figure is the time from the
// kill until B's NodeStageVolume has returned (lease taken, engine
// started at the new epoch, FUSE file and loop device up), the volume is
// published on B and a replicated write and flush through that device
// have completed. Nomad's own part (noticing the node is down, moving
// the allocation, the publish calls) is not in it: `make dev-failover`
// times the whole.
func runFailover(ctx context.Context, out io.Writer, o Options) (err error) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(out, "# failover: skipped, the CSI node plugin stages the volume on FUSE and a loop device, which needs root")
		return nil
	}
	dir := filepath.Join(o.Dir, "failover")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cl, err := testcluster.StartCluster(ctx, 2, testcluster.Options{Dir: dir})
	if err != nil {
		return fmt.Errorf("failover: consul cluster: %w", err)
	}
	defer cl.Stop()
	nodeA, nodeB := cl.Clients[0], cl.Clients[1]

	start := func(name string, args ...string) (*testcluster.Process, error) {
		p := testcluster.NewProcess(name, nil, append([]string{o.Binary}, args...), nil, filepath.Join(dir, name+".log"), false)
		return p, p.Start()
	}
	node := func(name string, agent *testcluster.Agent) (*testcluster.Process, string, error) {
		sock := filepath.Join(dir, name+".sock")
		p, err := start("node-"+name, "node", "--insecure", "--node", name, "--data-dir", filepath.Join(dir, name),
			"--listen", agent.IP+":0", "--consul-addr", agent.HTTPAddr, "--lock-delay", FailoverLockDelay.String(),
			"--ttl", failoverTTL.String(), "--metrics-addr", "", "--csi-endpoint", "unix://"+sock,
			"--csi-state-dir", filepath.Join(dir, name+"-csi"), "--stage-timeout", "2m")
		return p, sock, err
	}
	// Stopped in reverse order of start; A's stage, which its kill left
	// behind (a FUSE mount with no server, a loop device on it), is
	// cleared as NodeStageVolume would clear it.
	var procs []*testcluster.Process
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].Stop(syscall.SIGTERM, 30*time.Second)
		}
		fuseDir := filepath.Join(dir, "a-csi", "fuse", failoverVolume)
		if _, rerr := mount.Recover(context.WithoutCancel(ctx), mount.RecoverRequest{FUSEDir: fuseDir,
			BackingFile: filepath.Join(fuseDir, failoverVolume), Force: true}); rerr != nil {
			err = errors.Join(err, fmt.Errorf("failover: clear node a's stage: %w", rerr))
		}
	}()
	ctlSock := filepath.Join(dir, "controller.sock")
	ctlProc, err := start("controller", "controller", "--insecure", "--name", "controller", "--csi-endpoint", "unix://"+ctlSock,
		"--consul-addr", cl.Server.HTTPAddr, "--forward-addr", "127.0.0.1:0", "--metrics-addr", "")
	if err != nil {
		return err
	}
	procs = append(procs, ctlProc)
	a, sockA, err := node("a", nodeA)
	if err != nil {
		return err
	}
	procs = append(procs, a)
	b, sockB, err := node("b", nodeB)
	if err != nil {
		return err
	}
	procs = append(procs, b)
	failed := func(what string, err error) error {
		var logs []string
		for _, p := range procs {
			logs = append(logs, fmt.Sprintf("--- %s:\n%s", p.Name, p.LogTail(30)))
		}
		return fmt.Errorf("failover: %s: %w\n%s", what, err, strings.Join(logs, "\n"))
	}

	c, err := leader.NewClient(leader.ConsulConfig{Address: cl.Server.HTTPAddr}, o.Log)
	if err != nil {
		return err
	}
	conns := map[string]*grpc.ClientConn{}
	for _, sock := range []string{ctlSock, sockA, sockB} {
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		conns[sock] = conn
	}
	ctl := csi.NewControllerClient(conns[ctlSock])
	csiA, csiB := csi.NewNodeClient(conns[sockA]), csi.NewNodeClient(conns[sockB])

	// Both nodes up and the controller active: CreateVolume places a
	// replica on each.
	sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for {
		err = healthyNodes(sctx, c, 2)
		if err == nil {
			_, err = ctl.CreateVolume(sctx, &csi.CreateVolumeRequest{Name: failoverVolume, Parameters: map[string]string{"replicas": "2"},
				CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csi.VolumeCapability{failoverBlockCap}})
			if err == nil {
				break
			}
			if status.Code(err) != codes.Unavailable {
				return failed("create the volume", err)
			}
		}
		if serr := ctxutil.Sleep(sctx, 200*time.Millisecond); serr != nil {
			return failed("nodes and controller ready", err)
		}
	}
	if _, err := ctl.ControllerPublishVolume(sctx, &csi.ControllerPublishVolumeRequest{VolumeId: failoverVolume, NodeId: "a",
		VolumeCapability: failoverBlockCap}); err != nil {
		return failed("publish the volume to node a", err)
	}
	if _, err := csiA.NodeStageVolume(sctx, &csi.NodeStageVolumeRequest{VolumeId: failoverVolume,
		StagingTargetPath: filepath.Join(dir, "staging-a"), VolumeCapability: failoverBlockCap}); err != nil {
		return failed("stage the volume on node a", err)
	}
	holderA, err := c.ReadPrimary(sctx, failoverVolume)
	if err != nil {
		return failed("read the primary lock", err)
	}
	if holderA.Node != "a" {
		return failed("node a staged the volume", fmt.Errorf("the primary lock is held by %q", holderA.Node))
	}

	// B stands: its NodeStageVolume waits for the lease.
	stagingB, targetB := filepath.Join(dir, "staging-b"), filepath.Join(dir, "target-b")
	bctx, stopB := context.WithTimeout(ctx, 3*time.Minute)
	defer stopB()
	staged := make(chan error, 1)
	go func() {
		_, err := csiB.NodeStageVolume(bctx, &csi.NodeStageVolumeRequest{VolumeId: failoverVolume, StagingTargetPath: stagingB,
			VolumeCapability: failoverBlockCap})
		staged <- err
	}()
	standBy := time.Now().Add(time.Minute)
	for !strings.Contains(b.LogTail(20), "lock held by another session; waiting") {
		select {
		case err := <-staged:
			return failed("node b stands for the lease", fmt.Errorf("its NodeStageVolume returned at once: %v", err))
		case <-time.After(50 * time.Millisecond):
		}
		if ctx.Err() != nil || time.Now().After(standBy) {
			return failed("node b stands for the lease", errors.New("it is not waiting for the lock"))
		}
	}
	// When the lease changes hands, as Consul's server sees it.
	leaseTaken := make(chan time.Time, 1)
	go watchLease(bctx, c.API().KV(), c.Keys().Primary(failoverVolume), holderA.Session, leaseTaken)

	killed := time.Now()
	a.Kill()
	nodeA.Kill()
	select {
	case err := <-staged:
		if err != nil {
			return failed("node b takes over", err)
		}
	case <-bctx.Done():
		return failed("node b takes over", errors.New("not staged within 3m of the kill"))
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if _, uerr := csiB.NodeUnpublishVolume(uctx, &csi.NodeUnpublishVolumeRequest{VolumeId: failoverVolume, TargetPath: targetB}); uerr != nil {
			err = errors.Join(err, fmt.Errorf("failover: unpublish on node b: %w", uerr))
		}
		if _, uerr := csiB.NodeUnstageVolume(uctx, &csi.NodeUnstageVolumeRequest{VolumeId: failoverVolume, StagingTargetPath: stagingB}); uerr != nil {
			err = errors.Join(err, fmt.Errorf("failover: unstage on node b: %w", uerr))
		}
	}()
	if _, err := csiB.NodePublishVolume(bctx, &csi.NodePublishVolumeRequest{VolumeId: failoverVolume, StagingTargetPath: stagingB,
		TargetPath: targetB, VolumeCapability: failoverBlockCap}); err != nil {
		return failed("publish on node b", err)
	}
	if err := writeAndFlush(targetB); err != nil {
		return failed("first write on the new primary", err)
	}
	serving := time.Since(killed)
	var leaseAt time.Duration
	select {
	case at := <-leaseTaken:
		leaseAt = at.Sub(killed)
	case <-time.After(10 * time.Second):
		return failed("see the lease change hands", errors.New("no change of the primary lock seen"))
	}
	inSync, err := c.RecordedInSync(bctx, failoverVolume)
	if err != nil || inSync == nil {
		return failed("read the in-sync record", err)
	}
	fmt.Fprintf(out, "# failover: primary node's consul agent and saddlebag node SIGKILLed; new primary took the lease after %.2fs (lock-delay %s, check ttl %s), staged the volume through its CSI node plugin and completed a replicated write+flush on it after %.2fs, serving with %d of 2 replicas in sync\n",
		leaseAt.Seconds(), FailoverLockDelay, failoverTTL, serving.Seconds(), len(inSync.Replicas))
	fmt.Fprintf(out, "storage_failover_seconds %.2f\n", serving.Seconds())
	fmt.Fprintf(out, "storage_failover_lock_delay_seconds %.2f\n", FailoverLockDelay.Seconds())
	return nil
}

// healthyNodes reports an error unless Consul shows want healthy storage
// nodes.
func healthyNodes(ctx context.Context, c *leader.Client, want int) error {
	nodes, err := c.ListNodes(ctx)
	if err != nil {
		return err
	}
	healthy := 0
	for _, n := range nodes {
		if n.Healthy {
			healthy++
		}
	}
	if healthy != want {
		return fmt.Errorf("%d of %d storage nodes healthy", healthy, want)
	}
	return nil
}

// watchLease sends the time key is first seen held by a session other
// than old (a blocking query on the server, which outlives the kill).
func watchLease(ctx context.Context, kv *api.KV, key, old string, at chan<- time.Time) {
	var index uint64
	for ctx.Err() == nil {
		pair, meta, err := kv.Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: 30 * time.Second}).WithContext(ctx))
		if err != nil {
			_ = ctxutil.Sleep(ctx, 50*time.Millisecond)
			continue
		}
		if pair != nil && pair.Session != "" && pair.Session != old {
			at <- time.Now()
			return
		}
		index = meta.LastIndex
	}
}

// writeAndFlush writes a 4 KiB block at the start of the block device at
// path and flushes it (O_DIRECT from a page-aligned buffer, then fsync).
func writeAndFlush(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	if _, err := f.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return f.Close()
}
