package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/shoenig/test/must"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin"
)

// Two controllers: the one holding the leadership lock serves, and
// publishes its forward address in the lock. The standby answers
// read-only calls itself and forwards mutating ones to the active
// controller, returning its answer verbatim (success, or its status
// code), because Nomad sends a call to the first plugin instance and
// does not move on when that one answers Unavailable. A call already
// forwarded once is refused by a standby, never forwarded again.
// ControllerUnpublishVolume of the node serving a volume fences it: the
// node releases the primary lease. When the active controller is
// SIGKILLed, the standby cannot forward (Unavailable), then takes the
// lock and serves directly.
func TestControllerStandby(t *testing.T) {
	requireRoot(t)
	dev := testcluster.Dev(t, testcluster.Options{})
	dir := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, dir) })
	n1 := startCSINode(t, dev.HTTPAddr, "127.0.0.1", "n1", dir, true, "rack=a")
	p1, s1 := startController(t, dev.HTTPAddr, "c1", dir, "--forward-addr", "127.0.0.1:0")
	p1.waitLine(t, activeControlRE, 30*time.Second)
	p2, s2 := startController(t, dev.HTTPAddr, "c2", dir, "--forward-addr", "127.0.0.1:0")
	c := consulClient(t, dev.HTTPAddr)
	waitHealthyNodes(t, c, 1)
	active := csi.NewControllerClient(dialCSI(t, s1))
	standby := csi.NewControllerClient(dialCSI(t, s2))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	lead, err := c.ReadLeader(ctx)
	must.NoError(t, err)
	must.Eq(t, "c1", lead.Node)
	must.StrHasPrefix(t, "127.0.0.1:", lead.ForwardAddr)

	// Mutating calls on the standby are forwarded to c1 and take effect.
	create := &csi.CreateVolumeRequest{Name: "sb", Parameters: map[string]string{"replicas": "1"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap},
		Secrets: map[string]string{"token": "forwarded-secret-value"}}
	created, err := standby.CreateVolume(ctx, create)
	must.NoError(t, err)
	must.Eq(t, "sb", created.GetVolume().GetVolumeId())
	rec, _, err := c.GetVolume(ctx, "sb")
	must.NoError(t, err)
	must.Eq(t, leader.VolumeReady, rec.State)
	p2.waitLine(t, regexpMust(`forwarding mutating calls to the active controller.*active=c1`), 5*time.Second)
	p1.waitLine(t, regexpMust(`forward.*CreateVolume`), 5*time.Second)

	// The active controller's status comes back verbatim.
	_, err = standby.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "sb", Parameters: map[string]string{"replicas": "1"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	mustCode(t, codes.AlreadyExists, err)
	_, err = standby.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "sb", NodeId: "nowhere", VolumeCapability: swCap})
	mustCode(t, codes.NotFound, err)

	// A call already forwarded once is refused by a standby, and served
	// by the active controller.
	marked := metadata.AppendToOutgoingContext(ctx, plugin.ForwardedKey, "another-standby")
	loop := &csi.CreateVolumeRequest{Name: "loop", Parameters: map[string]string{"replicas": "1"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}}
	st := mustCode(t, codes.Unavailable, func() error { _, err := standby.CreateVolume(marked, loop); return err }())
	must.StrContains(t, st.Message(), "already forwarded")
	_, _, err = c.GetVolume(ctx, "loop")
	must.ErrorIs(t, err, leader.ErrNotFound)
	_, err = standby.DeleteVolume(marked, &csi.DeleteVolumeRequest{VolumeId: "sb"})
	mustCode(t, codes.Unavailable, err)
	_, err = active.CreateVolume(marked, loop)
	must.NoError(t, err)
	_, err = standby.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "loop"})
	must.NoError(t, err)
	_, _, err = c.GetVolume(ctx, "loop")
	must.ErrorIs(t, err, leader.ErrNotFound)

	// Read-only calls are answered by the standby itself.
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

	// Publish and fence by unpublishing, both through the standby: the
	// staged node gives the lease up.
	node := csi.NewNodeClient(dialCSI(t, n1.sock))
	staging := filepath.Join(dir, "sb-staging")
	_, err = standby.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "sb", NodeId: "n1", VolumeCapability: swCap})
	must.NoError(t, err)
	rec, _, err = c.GetVolume(ctx, "sb")
	must.NoError(t, err)
	must.Eq(t, []string{"n1"}, rec.Published)
	_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "sb", StagingTargetPath: staging, VolumeCapability: swCap})
	must.NoError(t, err)
	holder, err := c.ReadPrimary(ctx, "sb")
	must.NoError(t, err)
	must.Eq(t, "n1", holder.Node)
	_, err = standby.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "sb"})
	mustCode(t, codes.FailedPrecondition, err)
	_, err = standby.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: "sb", NodeId: "n1"})
	must.NoError(t, err)
	holder, err = c.ReadPrimary(ctx, "sb")
	must.NoError(t, err)
	must.Eq(t, "", holder.Node)
	rec, _, err = c.GetVolume(ctx, "sb")
	must.NoError(t, err)
	must.SliceEmpty(t, rec.Published)
	n1.waitLine(t, regexpMust(`fenced by the controller`), 10*time.Second)
	_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "sb", StagingTargetPath: staging})
	must.NoError(t, err)

	// The active controller dies: until its session ends and lock-delay
	// passes the standby has nobody to forward to and says so.
	p1.kill()
	_, err = standby.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "sb"})
	mustCode(t, codes.Unavailable, err)
	_, _, err = c.GetVolume(ctx, "sb")
	must.NoError(t, err)
	p2.waitLine(t, activeControlRE, 60*time.Second)
	lead, err = c.ReadLeader(ctx)
	must.NoError(t, err)
	must.Eq(t, "c2", lead.Node)
	_, err = standby.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "sb"})
	must.NoError(t, err)
	_, _, err = c.GetVolume(ctx, "sb")
	must.ErrorIs(t, err, leader.ErrNotFound)
	list, err = standby.ListVolumes(ctx, &csi.ListVolumesRequest{})
	must.NoError(t, err)
	must.Len(t, 0, list.GetEntries())

	// No log line of either controller carries a request's secrets.
	for _, p := range []*proc{p1, p2} {
		must.False(t, strings.Contains(procOutput(p), "forwarded-secret-value"), must.Sprint("a secret reached the log"))
	}
}

// procOutput is everything p has logged so far.
func procOutput(p *proc) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}
