package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"
	"google.golang.org/grpc/codes"

	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
)

// Three nodes with labels rack=a,a,b, each with its own Consul client
// agent on 127.0.0.2-4:
//   - replicas=2 with spread=rack always puts one replica in each rack;
//   - a replica's node killed (node agent and Consul agent) for longer
//     than --replica-grace gets a new replica on the other node, fully
//     synced (the data files are byte-identical), and the volume's health
//     check passes again;
//   - with that node dead, replicas=3 fails with ResourceExhausted naming
//     the shortfall, and nothing of the volume is left in Consul or on
//     any node's disk.
func TestCSIPlacementAndReplacement(t *testing.T) {
	requireRoot(t)
	cl := testcluster.NewCluster(t, 3, testcluster.Options{})
	dir := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, dir) })
	racks := []string{"rack=a", "rack=a", "rack=b"}
	nodes := make([]*csiNode, 3)
	for i := range nodes {
		nodes[i] = startCSINode(t, cl.Clients[i].HTTPAddr, cl.Clients[i].IP, fmt.Sprintf("n%d", i+1), dir, true, racks[i])
	}
	ctlProc, ctlSock := startController(t, cl.Server.HTTPAddr, "c1", dir, "--replica-grace", "3s", "--replica-scan", "300ms")
	ctlProc.waitLine(t, activeControlRE, 30*time.Second)
	c := consulClient(t, cl.Server.HTTPAddr)
	waitHealthyNodes(t, c, 3)
	ctl := csi.NewControllerClient(dialCSI(t, ctlSock))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	spread := map[string]string{"replicas": "2", "spread": "rack"}

	t.Run("replicas=2 spread over racks", func(t *testing.T) {
		for i := range 6 {
			name := fmt.Sprintf("spread-%d", i)
			resp, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, Parameters: spread,
				CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
			must.NoError(t, err)
			var rs []string
			for _, tp := range resp.GetVolume().GetAccessibleTopology() {
				rs = append(rs, tp.GetSegments()["rack"])
			}
			slices.Sort(rs)
			must.Eq(t, []string{"a", "b"}, rs, must.Sprintf("volume %s", name))
			for _, tp := range resp.GetVolume().GetAccessibleTopology() {
				must.FileExists(t, filepath.Join(nodeNamed(nodes, tp.GetSegments()["saddlebag.io/node"]).dataDir, name, "data"))
			}
			_, err = ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId()})
			must.NoError(t, err)
			for _, n := range nodes {
				_, err := os.Stat(filepath.Join(n.dataDir, name))
				must.True(t, errors.Is(err, os.ErrNotExist), must.Sprintf("%s left on %s", name, n.name))
			}
		}
	})

	// A volume staged on n3 (rack b) with its other replica in rack a.
	_, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "rr", Parameters: spread,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	must.NoError(t, err)
	rec, _, err := c.GetVolume(ctx, "rr")
	must.NoError(t, err)
	var lost, spare *csiNode
	for _, r := range rec.Replicas {
		if r.Node != "n3" {
			lost = nodeNamed(nodes, r.Node)
		}
	}
	must.NotNil(t, lost)
	spare = nodes[0]
	if lost == nodes[0] {
		spare = nodes[1]
	}
	n3 := csi.NewNodeClient(dialCSI(t, nodes[2].sock))
	staging := filepath.Join(dir, "rr-staging")
	_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "rr", NodeId: "n3", VolumeCapability: swCap})
	must.NoError(t, err)
	_, err = n3.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "rr", StagingTargetPath: staging, VolumeCapability: swCap})
	must.NoError(t, err)
	staged := true
	t.Cleanup(func() {
		if staged {
			_, _ = n3.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: "rr", StagingTargetPath: staging})
		}
	})
	before := make([]byte, 3<<20)
	for i := range before {
		before[i] = byte(i * 7)
	}
	writeSynced(t, filepath.Join(staging, "before"), before)
	waitVolumeCheck(t, c, "rr", api.HealthPassing)

	t.Run("replica node killed beyond the grace is replaced", func(t *testing.T) {
		lost.kill()
		cl.Clients[slices.Index(nodes, lost)].Kill()
		after := make([]byte, 2<<20)
		for i := range after {
			after[i] = byte(i * 13)
		}
		writeSynced(t, filepath.Join(staging, "after"), after) // written while degraded
		waitForCond(t, 90*time.Second, "lost replica replaced and in sync", func() bool {
			rec, _, err := c.GetVolume(ctx, "rr")
			if err != nil {
				return false
			}
			var got []string
			for _, r := range rec.Replicas {
				if r.State != "ready" {
					return false
				}
				got = append(got, r.Node)
			}
			slices.Sort(got)
			return slices.Equal(got, []string{spare.name, "n3"})
		})
		waitVolumeCheck(t, c, "rr", api.HealthPassing)
		// Unstage (the engine flushes and the file system is quiet), then
		// the new replica must equal the survivor byte for byte.
		_, err := n3.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "rr", StagingTargetPath: staging})
		must.NoError(t, err)
		staged = false
		must.Eq(t, sha256File(t, dataFile(nodes[2].dataDir, "rr")), sha256File(t, dataFile(spare.dataDir, "rr")))
		inSync, _, err := c.ReadInSync(ctx, "rr")
		must.NoError(t, err)
		must.SliceContainsAll(t, []string{nodes[2].addr, spare.addr}, inSync.Replicas)
	})

	t.Run("replicas=3 with 2 healthy nodes is ResourceExhausted and leaves nothing", func(t *testing.T) {
		waitHealthyNodes(t, c, 2)
		_, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "three", Parameters: map[string]string{"replicas": "3"},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
		st := mustCode(t, codes.ResourceExhausted, err)
		must.StrContains(t, st.Message(), "wants 3 replicas")
		must.StrContains(t, st.Message(), "only 2 nodes qualify")
		must.StrContains(t, st.Message(), lost.name+" (unhealthy)")
		pairs, _, err := c.API().KV().List(c.Keys().Volume("three"), nil)
		must.NoError(t, err)
		must.SliceEmpty(t, pairs)
		for _, n := range nodes {
			_, err := os.Stat(filepath.Join(n.dataDir, "three"))
			must.True(t, errors.Is(err, os.ErrNotExist), must.Sprintf("replica of a refused volume on %s", n.name))
		}
	})
}

func nodeNamed(nodes []*csiNode, name string) *csiNode {
	for _, n := range nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// waitVolumeCheck waits until the volume's health check has status want.
func waitVolumeCheck(t *testing.T, c *leader.Client, volume, want string) {
	t.Helper()
	waitForCond(t, 60*time.Second, "volume "+volume+" check "+want, func() bool {
		checks, _, err := c.API().Health().State(api.HealthAny, nil)
		if err != nil {
			return false
		}
		for _, ch := range checks {
			if ch.CheckID == leader.VolumeCheckID(volume) {
				return ch.Status == want
			}
		}
		return false
	})
}
