package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/shoenig/test/must"
	"google.golang.org/grpc/codes"

	"github.com/saddlebag/saddlebag/internal/testcluster"
)

// Two controllers: the one holding the leadership lock serves; the
// standby answers read-only calls and refuses mutating ones with
// Unavailable. ControllerUnpublishVolume of the node serving a volume
// fences it: the node releases the primary lease. When the active
// controller is SIGKILLed, the standby takes the lock and serves.
func TestControllerStandby(t *testing.T) {
	requireRoot(t)
	dev := testcluster.Dev(t, testcluster.Options{})
	dir := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, dir) })
	n1 := startCSINode(t, dev.HTTPAddr, "127.0.0.1", "n1", dir, true, "rack=a")
	p1, s1 := startController(t, dev.HTTPAddr, "c1", dir)
	p1.waitLine(t, activeControlRE, 30*time.Second)
	p2, s2 := startController(t, dev.HTTPAddr, "c2", dir)
	waitHealthyNodes(t, consulClient(t, dev.HTTPAddr), 1)
	active := csi.NewControllerClient(dialCSI(t, s1))
	standby := csi.NewControllerClient(dialCSI(t, s2))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	create := &csi.CreateVolumeRequest{Name: "sb", Parameters: map[string]string{"replicas": "1"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}}

	_, err := standby.CreateVolume(ctx, create)
	mustCode(t, codes.Unavailable, err)
	_, err = standby.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "sb"})
	mustCode(t, codes.Unavailable, err)
	_, err = standby.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "sb", NodeId: "n1", VolumeCapability: swCap})
	mustCode(t, codes.Unavailable, err)

	_, err = active.CreateVolume(ctx, create)
	must.NoError(t, err)
	list, err := standby.ListVolumes(ctx, &csi.ListVolumesRequest{})
	must.NoError(t, err)
	must.Len(t, 1, list.GetEntries())
	v, err := standby.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "sb",
		VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	must.NoError(t, err)
	must.NotNil(t, v.GetConfirmed())
	capResp, err := standby.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"replicas": "1"}})
	must.NoError(t, err)
	must.Positive(t, capResp.GetAvailableCapacity())

	// Fence by unpublishing: the staged node gives the lease up.
	c := consulClient(t, dev.HTTPAddr)
	node := csi.NewNodeClient(dialCSI(t, n1.sock))
	staging := filepath.Join(dir, "sb-staging")
	_, err = active.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "sb", NodeId: "n1", VolumeCapability: swCap})
	must.NoError(t, err)
	_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "sb", StagingTargetPath: staging, VolumeCapability: swCap})
	must.NoError(t, err)
	holder, err := c.ReadPrimary(ctx, "sb")
	must.NoError(t, err)
	must.Eq(t, "n1", holder.Node)
	_, err = active.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "sb"})
	mustCode(t, codes.FailedPrecondition, err)
	_, err = active.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: "sb", NodeId: "n1"})
	must.NoError(t, err)
	holder, err = c.ReadPrimary(ctx, "sb")
	must.NoError(t, err)
	must.Eq(t, "", holder.Node)
	n1.waitLine(t, regexpMust(`fenced by the controller`), 10*time.Second)
	_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "sb", StagingTargetPath: staging})
	must.NoError(t, err)

	p1.kill()
	p2.waitLine(t, activeControlRE, 60*time.Second)
	_, err = standby.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "sb"})
	must.NoError(t, err)
	list, err = standby.ListVolumes(ctx, &csi.ListVolumesRequest{})
	must.NoError(t, err)
	must.Len(t, 0, list.GetEntries())
}
