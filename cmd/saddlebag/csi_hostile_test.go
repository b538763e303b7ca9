package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
)

// hostileVolumeIDs alias the volume "victim" through every trick a key
// path or a file path could fall for, or are plainly malformed.
var hostileVolumeIDs = []string{"x/../victim", "victim/..", "victim/", "/victim", "./victim", "../volumes/victim", "victim/primary",
	"x%2F..%2Fvictim", "victim%00", "x//victim", "vic..tim", "victim\n", "\x00", "victim\x1b[2J", ".", "..",
	strings.Repeat("v", 129), strings.Repeat("../", 400) + "victim"}

// An adversarial caller speaking CSI to real `saddlebag controller` and
// `saddlebag node` processes: hostile ids against every RPC that takes
// one, and relative, ".."-laden, symlinked and foreign paths against
// every node RPC. Each is InvalidArgument (NotFound, or success for the
// idempotent deletes, for a well-formed unknown id); afterwards the
// victim volume still serves with its data, no Consul key outside the
// layout exists, and no path outside the plugin's own was touched.
func TestCSIHostileInput(t *testing.T) {
	requireRoot(t)
	dev := testcluster.Dev(t, testcluster.Options{})
	dir := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, dir) })
	recoverOnFailure(t, dir, filepath.Join(dir, "n1", "csi"), "victim")
	n1 := startCSINode(t, dev.HTTPAddr, "127.0.0.1", "n1", dir, true, "rack=a")
	ctlProc, ctlSock := startController(t, dev.HTTPAddr, "c1", dir)
	ctlProc.waitLine(t, activeControlRE, 30*time.Second)
	c := consulClient(t, dev.HTTPAddr)
	waitHealthyNodes(t, c, 1)
	ctl := csi.NewControllerClient(dialCSI(t, ctlSock))
	node := csi.NewNodeClient(dialCSI(t, n1.sock))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	_, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "victim", Parameters: map[string]string{"replicas": "1"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	must.NoError(t, err)
	_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "victim", NodeId: "n1", VolumeCapability: swCap})
	must.NoError(t, err)
	staging, target := filepath.Join(dir, "staging", "victim"), filepath.Join(dir, "target", "victim")
	_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "victim", StagingTargetPath: staging, VolumeCapability: swCap})
	must.NoError(t, err)
	_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "victim", StagingTargetPath: staging, TargetPath: target,
		VolumeCapability: swCap})
	must.NoError(t, err)
	must.NoError(t, os.WriteFile(filepath.Join(target, "marker"), []byte("still here"), 0o644))
	holder, err := c.ReadPrimary(ctx, "victim")
	must.NoError(t, err)

	// Bait outside the plugin's directories: a foreign directory with a
	// file, and symlinks to the real staging and target paths.
	foreign := filepath.Join(dir, "foreign")
	must.NoError(t, os.MkdirAll(foreign, 0o755))
	must.NoError(t, os.WriteFile(filepath.Join(foreign, "keep"), []byte("x"), 0o644))
	stagingLink, targetLink := filepath.Join(dir, "staging-link"), filepath.Join(dir, "target-link")
	must.NoError(t, os.Symlink(staging, stagingLink))
	must.NoError(t, os.Symlink(target, targetLink))
	cwd, err := os.Getwd()
	must.NoError(t, err)
	cwdBefore, err := os.ReadDir(cwd)
	must.NoError(t, err)

	invalid := func(what string, err error) {
		t.Helper()
		st, _ := status.FromError(err)
		must.Eq(t, codes.InvalidArgument, st.Code(), must.Sprintf("%s: %v", what, err))
	}
	for _, id := range hostileVolumeIDs {
		q := strings.ToValidUTF8(id[:min(len(id), 30)], "?")
		_, err := ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		invalid("DeleteVolume "+q, err)
		_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "n1", VolumeCapability: swCap})
		invalid("ControllerPublishVolume "+q, err)
		_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "victim", NodeId: id, VolumeCapability: swCap})
		invalid("ControllerPublishVolume node "+q, err)
		_, err = ctl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "n1"})
		invalid("ControllerUnpublishVolume "+q, err)
		_, err = ctl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: "victim", NodeId: id})
		invalid("ControllerUnpublishVolume node "+q, err)
		_, err = ctl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
		invalid("ValidateVolumeCapabilities "+q, err)
		_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: swCap})
		invalid("NodeStageVolume "+q, err)
		_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
			TargetPath: filepath.Join(dir, "t2"), VolumeCapability: swCap})
		invalid("NodePublishVolume "+q, err)
		_, err = node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
		invalid("NodeGetVolumeStats "+q, err)
		_, err = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		invalid("NodeUnpublishVolume "+q, err)
		_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		invalid("NodeUnstageVolume "+q, err)
	}
	_, err = ctl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "after:x/../victim"})
	mustCode(t, codes.Aborted, err)
	// A name is free text, but never becomes an alias: it is hashed.
	alias, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "x/../victim", Parameters: map[string]string{"replicas": "1"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	must.NoError(t, err)
	must.StrHasPrefix(t, "h-", alias.GetVolume().GetVolumeId())
	_, err = ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: alias.GetVolume().GetVolumeId()})
	must.NoError(t, err)

	// Well-formed ids that name nothing.
	_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "victim2", NodeId: "n1", VolumeCapability: swCap})
	mustCode(t, codes.NotFound, err)
	_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "victim", NodeId: "n9", VolumeCapability: swCap})
	mustCode(t, codes.NotFound, err)
	_, err = ctl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "victim2", VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	mustCode(t, codes.NotFound, err)
	_, err = node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "victim2", VolumePath: target})
	mustCode(t, codes.NotFound, err)
	_, err = ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "victim2"})
	must.NoError(t, err)

	// Paths.
	badPaths := []string{"staging/victim", "./staging", "relative", dir + "/staging/../staging/victim",
		staging + "/", dir + "//staging/victim", staging + "/.", "/" + strings.Repeat("p/", 2100)}
	for _, p := range badPaths {
		q := p[:min(len(p), 60)]
		_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "victim", StagingTargetPath: p, VolumeCapability: swCap})
		invalid("NodeStageVolume "+q, err)
		_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "victim", StagingTargetPath: p})
		invalid("NodeUnstageVolume "+q, err)
		_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "victim", StagingTargetPath: staging, TargetPath: p, VolumeCapability: swCap})
		invalid("NodePublishVolume "+q, err)
		_, err = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "victim", TargetPath: p})
		invalid("NodeUnpublishVolume "+q, err)
	}
	for _, p := range []string{staging + "/../victim", "../x", "a/./b", target + "\n", "some/path", "relative"} {
		_, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "victim", VolumePath: p})
		invalid("NodeGetVolumeStats "+p, err)
	}
	// Symlinks to the real paths are refused, not followed.
	_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "victim", StagingTargetPath: stagingLink})
	invalid("NodeUnstageVolume through a symlink", err)
	_, err = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "victim", TargetPath: targetLink})
	invalid("NodeUnpublishVolume through a symlink", err)
	_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "victim", StagingTargetPath: staging, TargetPath: targetLink, VolumeCapability: swCap})
	invalid("NodePublishVolume onto a symlink", err)
	_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "victim", StagingTargetPath: stagingLink,
		TargetPath: filepath.Join(dir, "t3"), VolumeCapability: swCap})
	invalid("NodePublishVolume from a symlinked staging path", err)
	_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "victim", StagingTargetPath: stagingLink, VolumeCapability: swCap})
	invalid("NodeStageVolume at a symlink", err)
	_, err = node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "victim", VolumePath: targetLink})
	invalid("NodeGetVolumeStats through a symlink", err) // not the volume's path: never looked at
	// Foreign paths: the unstage of another path does not tear the real
	// staging down; the unpublish of a foreign directory removes nothing.
	_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "victim", StagingTargetPath: foreign})
	invalid("NodeUnstageVolume of a foreign path", err)
	_, err = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "victim", TargetPath: foreign})
	invalid("NodeUnpublishVolume of a foreign path", err)
	_, err = node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "victim", VolumePath: foreign})
	invalid("NodeGetVolumeStats of a foreign path", err)

	// Nothing outside the plugin's own directories changed.
	_, err = os.Stat(filepath.Join(foreign, "keep"))
	must.NoError(t, err)
	cwdAfter, err := os.ReadDir(cwd)
	must.NoError(t, err)
	must.Eq(t, len(cwdBefore), len(cwdAfter), must.Sprint("something was created in the plugin's working directory"))
	for _, l := range []string{stagingLink, targetLink} {
		st, err := os.Lstat(l)
		must.NoError(t, err)
		must.True(t, st.Mode()&os.ModeSymlink != 0)
	}
	// Every Consul key is one of the layout's for the one node and volume.
	pairs, _, err := c.API().KV().List("", &api.QueryOptions{RequireConsistent: true})
	must.NoError(t, err)
	want := []string{"saddlebag/leader", "saddlebag/nodes/n1", "saddlebag/volumes/victim", "saddlebag/volumes/victim/insync",
		"saddlebag/volumes/victim/primary"}
	for _, p := range pairs {
		must.True(t, slices.Contains(want, p.Key), must.Sprintf("unexpected consul key %q", p.Key))
	}
	// The victim still serves: same primary, record ready, data there,
	// its replica in place.
	rec, _, err := c.GetVolume(ctx, "victim")
	must.NoError(t, err)
	must.Eq(t, leader.VolumeReady, rec.State)
	h2, err := c.ReadPrimary(ctx, "victim")
	must.NoError(t, err)
	must.Eq(t, holder, h2)
	b, err := os.ReadFile(filepath.Join(target, "marker"))
	must.NoError(t, err)
	must.Eq(t, "still here", string(b))
	_, err = os.Stat(filepath.Join(n1.dataDir, "victim", "data"))
	must.NoError(t, err)
	stats, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "victim", VolumePath: target})
	must.NoError(t, err)
	must.Positive(t, stats.GetUsage()[0].GetTotal())

	// And the real calls still work.
	_, err = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "victim", TargetPath: target})
	must.NoError(t, err)
	_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "victim", StagingTargetPath: staging})
	must.NoError(t, err)
	_, err = ctl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: "victim", NodeId: "n1"})
	must.NoError(t, err)
	_, err = ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "victim"})
	must.NoError(t, err)
	_, err = os.Stat(filepath.Join(n1.dataDir, "victim"))
	must.True(t, os.IsNotExist(err), must.Sprintf("replica left: %v", err))
}
