package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin/mount"
)

// csiNode is a `saddlebag node` process started by a test.
type csiNode struct {
	*proc
	name, addr, dataDir, sock string
}

var (
	csiServingRE     = regexpMust(`serving csi`)
	activeControlRE  = regexpMust(`active controller: holding the leadership lock`)
	standbyControlRE = regexpMust(`leadership lost`)
)

// startCSINode runs `saddlebag node` on ip with the CSI node service on a
// socket in dir (when withCSI) and waits until it has a session.
func startCSINode(t *testing.T, consulAddr, ip, name, dir string, withCSI bool, labels ...string) *csiNode {
	t.Helper()
	n := &csiNode{name: name, dataDir: filepath.Join(dir, name, "data")}
	args := []string{"node", "--node", name, "--data-dir", n.dataDir, "--listen", ip + ":0",
		"--consul-addr", consulAddr, "--ttl", "1500ms", "--lock-delay", "1s", "--log-level", "debug", "--metrics-addr", "127.0.0.1:0"}
	for _, l := range labels {
		args = append(args, "--label", l)
	}
	if withCSI {
		n.sock = filepath.Join(dir, name+".sock")
		args = append(args, "--csi-endpoint", "unix://"+n.sock, "--csi-state-dir", filepath.Join(dir, name, "csi"),
			"--max-volumes", "8", "--stage-timeout", "30s")
	}
	n.proc = startProc(t, args...)
	n.addr = n.waitLine(t, replicaAddrRE, 10*time.Second)[1]
	n.waitLine(t, nodeSessionRE, 30*time.Second)
	if withCSI {
		n.waitLine(t, csiServingRE, 10*time.Second)
	}
	return n
}

// startController runs `saddlebag controller` and returns it with its
// socket. Its forward channel listens on a free loopback port (a later
// --forward-addr in extra overrides it).
func startController(t *testing.T, consulAddr, name, dir string, extra ...string) (*proc, string) {
	t.Helper()
	sock := filepath.Join(dir, name+".sock")
	args := append([]string{"controller", "--name", name, "--csi-endpoint", "unix://" + sock, "--consul-addr", consulAddr,
		"--ttl", "1500ms", "--lock-delay", "1s", "--log-level", "debug", "--forward-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"}, extra...)
	p := startProc(t, args...)
	p.waitLine(t, csiServingRE, 10*time.Second)
	return p, sock
}

func dialCSI(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	must.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

func consulClient(t *testing.T, addr string) *leader.Client {
	t.Helper()
	c, err := leader.NewClient(leader.ConsulConfig{Address: addr}, hclog.NewNullLogger())
	must.NoError(t, err)
	return c
}

// waitHealthyNodes waits until Consul shows want healthy storage nodes.
func waitHealthyNodes(t *testing.T, c *leader.Client, want int) {
	t.Helper()
	waitForCond(t, 60*time.Second, fmt.Sprintf("%d healthy nodes", want), func() bool {
		nodes, err := c.ListNodes(context.Background())
		if err != nil {
			return false
		}
		healthy := 0
		for _, n := range nodes {
			if n.Healthy {
				healthy++
			}
		}
		return healthy == want
	})
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
}

var swCap = mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)

// mustCode asserts a gRPC status code.
func mustCode(t *testing.T, want codes.Code, err error) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	must.Eq(t, want, st.Code(), must.Sprintf("error: %v", err))
	return st
}

// assertNothingMountedUnder fails if any mount point lies under dir.
func assertNothingMountedUnder(t *testing.T, dir string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	must.NoError(t, err)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir) {
			t.Errorf("left mounted: %s", line)
		}
	}
}

// recoverOnFailure registers a cleanup that, when the test has failed,
// clears what a staged volume may have left after the processes stopped:
// every mount under dir (deepest first, lazily) and, through
// mount.Recover, the FUSE mounts and loop devices of each volume under
// stateDir. It must be registered after the assertNothingMountedUnder
// cleanup (so it runs before it) and before the processes start (so it
// runs after they stop).
func recoverOnFailure(t *testing.T, dir, stateDir string, volumes ...string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, v := range volumes {
			fuseDir := filepath.Join(stateDir, "fuse", v)
			if _, err := mount.Recover(context.Background(), mount.RecoverRequest{FUSEDir: fuseDir, BackingFile: filepath.Join(fuseDir, v),
				Force: true}); err != nil {
				t.Logf("recover %s: %v", v, err)
			}
		}
		data, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			return
		}
		var points []string
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir) {
				points = append(points, f[4])
			}
		}
		for i := len(points) - 1; i >= 0; i-- {
			if err := unix.Unmount(points[i], unix.MNT_DETACH); err != nil {
				t.Logf("unmount %s: %v", points[i], err)
			}
		}
	})
}

// blockCap is raw block access for a single writer: the volume is the
// loop device on its FUSE file, bound at the publish target.
var blockCap = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}

// csiVolume is a volume served through the CSI path: created by a
// controller, published to a node and staged there (the node's CSI node
// plugin takes the primary lease and starts the engine).
type csiVolume struct {
	id, staging, target string
	ctl                 csi.ControllerClient
	node                csi.NodeClient
}

// createVolume creates a volume of size bytes with replicas replicas
// through the controller at ctlSock, retrying while no controller is
// active yet.
func createVolume(t *testing.T, ctx context.Context, ctlSock, id string, size int64, replicas int) csi.ControllerClient {
	t.Helper()
	ctl := csi.NewControllerClient(dialCSI(t, ctlSock))
	waitForCond(t, 60*time.Second, "CreateVolume "+id, func() bool {
		_, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: id, Parameters: map[string]string{"replicas": fmt.Sprint(replicas)},
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{blockCap}})
		if status.Code(err) == codes.Unavailable {
			return false
		}
		must.NoError(t, err)
		return true
	})
	return ctl
}

// serveBlockVolume creates volume id (see createVolume), publishes it to
// nodeName, and stages it on that node's CSI socket as a block volume,
// which makes the node its primary. A cleanup unpublishes and unstages
// it (flushing the engine and releasing the lease) before the node's
// process is stopped; writers on a published target must stop first.
func serveBlockVolume(t *testing.T, ctx context.Context, ctlSock, nodeSock, nodeName, dir, id string, size int64, replicas int) *csiVolume {
	t.Helper()
	v := &csiVolume{id: id, staging: filepath.Join(dir, "staging", id), target: filepath.Join(dir, "target", id),
		ctl: createVolume(t, ctx, ctlSock, id, size, replicas), node: csi.NewNodeClient(dialCSI(t, nodeSock))}
	_, err := v.ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: nodeName, VolumeCapability: blockCap})
	must.NoError(t, err)
	v.stage(t, ctx)
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := v.node.NodeUnpublishVolume(cctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: v.target}); err != nil {
			t.Errorf("unpublish %s: %v", id, err)
		}
		if _, err := v.node.NodeUnstageVolume(cctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: v.staging}); err != nil {
			t.Errorf("unstage %s: %v", id, err)
		}
	})
	return v
}

// stage stages the volume (again: a stage whose lease was lost is undone
// and done over at a new epoch). Like Nomad, it tries again for a while
// on Unavailable (the node's own undoing of a lost stage may still hold
// the replica).
func (v *csiVolume) stage(t *testing.T, ctx context.Context) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := v.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: blockCap})
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			must.NoError(t, err)
			return
		}
		t.Logf("stage %s: %v; retrying", v.id, err)
		time.Sleep(500 * time.Millisecond)
	}
}

// publish binds the staged volume's device at its target (under the
// test's directory), where a workload writes to it.
func (v *csiVolume) publish(t *testing.T, ctx context.Context) {
	t.Helper()
	_, err := v.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging,
		TargetPath: v.target, VolumeCapability: blockCap})
	must.NoError(t, err)
}
