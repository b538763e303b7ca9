package node

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin"
	"github.com/saddlebag/saddlebag/plugin/internal/rpc"
)

// hostileIDs are ids an adversarial caller sends: path syntax, URL
// escapes, empty segments, control characters and length.
var hostileIDs = []string{".", "..", "../victim", "victim/..", "victim/../other", "a/b", "/victim", "victim/", "a//b",
	"a..b", "%2F", "victim%2F..%2Fother", "..%2Fvictim", "a\x00b", "a\nb", "\tvictim", "victim\x7f", "-x", ".x",
	"vïctim", "a b", "a\\b", strings.Repeat("v", 129), strings.Repeat("v/", 5000)}

// hostilePaths are staging and target paths CSI never passes.
var hostilePaths = []string{"relative", "some/path", "./x", "/a/../b", "/a/./b", "/a//b", "/a/b/", "..", "/..",
	"/a/b\x00", "/a/\nb", "/" + strings.Repeat("p", 4100)}

// unreachableClient is a Consul client that no request can reach: a test
// that gets an answer through it proves the RPC never asked Consul.
func testServices(t testing.TB) (*plugin.Controller, *Node) {
	t.Helper()
	c, err := leader.NewClient(leader.ConsulConfig{Address: "127.0.0.1:1"}, nil)
	must.NoError(t, err)
	a, err := leader.NewAgent(leader.AgentConfig{Client: c, Node: "n1"})
	must.NoError(t, err)
	ctrl, err := plugin.NewController(plugin.ControllerConfig{Client: c, Agent: a})
	must.NoError(t, err)
	node, err := New(Config{Agent: a, Client: c, NodeID: "n1", StateDir: t.TempDir(), Log: hclog.NewNullLogger()})
	must.NoError(t, err)
	return ctrl, node
}

func mustInvalid(t *testing.T, err error, what string) {
	t.Helper()
	st, _ := status.FromError(err)
	must.Eq(t, codes.InvalidArgument, st.Code(), must.Sprintf("%s: %v", what, err))
}

var testCap = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}

// Every RPC that takes an id refuses a hostile one with InvalidArgument
// before it asks Consul (which is unreachable here) or touches a file.
func TestRPCsRefuseHostileIDs(t *testing.T) {
	t.Parallel()
	ctrl, node := testServices(t)
	ctx := context.Background()
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	for _, id := range hostileIDs {
		calls := map[string]func() error{
			"DeleteVolume": func() error { _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); return err },
			"ControllerPublishVolume": func() error {
				_, err := ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "n1", VolumeCapability: testCap})
				return err
			},
			"ControllerPublishVolume node": func() error {
				_, err := ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "victim", NodeId: id, VolumeCapability: testCap})
				return err
			},
			"ControllerUnpublishVolume": func() error {
				_, err := ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "n1"})
				return err
			},
			"ControllerUnpublishVolume node": func() error {
				_, err := ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: "victim", NodeId: id})
				return err
			},
			"ValidateVolumeCapabilities": func() error {
				_, err := ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{testCap}})
				return err
			},
			"NodeStageVolume": func() error {
				_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: testCap})
				return err
			},
			"NodeUnstageVolume": func() error {
				_, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
				return err
			},
			"NodePublishVolume": func() error {
				_, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: testCap})
				return err
			},
			"NodeUnpublishVolume": func() error {
				_, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
				return err
			},
			"NodeGetVolumeStats": func() error {
				_, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: staging})
				return err
			},
		}
		for name, call := range calls {
			err := call()
			mustInvalid(t, err, name+" "+strings.ToValidUTF8(id[:min(len(id), 40)], "?"))
			if !strings.Contains(name, "node") {
				must.StrContains(t, status.Convert(err).Message(), "volume_id")
			}
		}
	}
	for _, name := range []string{strings.Repeat("n", 129), "a\nb", "\xff\xfe"} {
		_, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{testCap}})
		mustInvalid(t, err, "CreateVolume name")
	}
	// A ListVolumes token naming no valid id is refused (Aborted, as CSI
	// says for a token the plugin did not make).
	_, err := ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "after:../x"})
	must.Eq(t, codes.Aborted, status.Code(err))
	entries, err := os.ReadDir(dir)
	must.NoError(t, err)
	must.SliceEmpty(t, entries, must.Sprint("a refused call created something"))
}

// Node RPCs refuse relative, unclean, symlinked and plugin-internal paths
// with InvalidArgument; an unpublish or unstage of a path that was never
// published or staged for the volume touches nothing.
func TestNodeRPCsRefuseHostilePaths(t *testing.T) {
	t.Parallel()
	_, node := testServices(t)
	ctx := context.Background()
	dir := t.TempDir()
	outside := filepath.Join(dir, "outside")
	must.NoError(t, os.MkdirAll(filepath.Join(outside, "keep"), 0o755))
	link := filepath.Join(dir, "link")
	must.NoError(t, os.Symlink(outside, link))
	bad := append(append([]string{}, hostilePaths...), link, node.cfg.StateDir, filepath.Join(node.cfg.StateDir, "fuse", "victim"), "/")
	for _, p := range bad {
		_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "victim", StagingTargetPath: p, VolumeCapability: testCap})
		mustInvalid(t, err, "NodeStageVolume "+p)
		_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "victim", StagingTargetPath: p})
		mustInvalid(t, err, "NodeUnstageVolume "+p)
		_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "victim", StagingTargetPath: filepath.Join(dir, "s"),
			TargetPath: p, VolumeCapability: testCap})
		mustInvalid(t, err, "NodePublishVolume target "+p)
		_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "victim", StagingTargetPath: p,
			TargetPath: filepath.Join(dir, "t"), VolumeCapability: testCap})
		mustInvalid(t, err, "NodePublishVolume staging "+p)
		_, err = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "victim", TargetPath: p})
		mustInvalid(t, err, "NodeUnpublishVolume "+p)
	}
	// Stats: a malformed path is InvalidArgument whatever the id.
	for _, p := range []string{"/a/../b", "../x", "a/./b", "/a\nb"} {
		_, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "victim", VolumePath: p})
		mustInvalid(t, err, "NodeGetVolumeStats "+p)
	}
	_, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "victim", VolumePath: outside})
	must.Eq(t, codes.NotFound, status.Code(err), must.Sprint("a volume not staged here is NotFound"))
	// A volume staged here, asked at a relative path or at a path it was
	// neither staged nor published at: InvalidArgument, and only its own
	// staging path answers.
	staging := filepath.Join(dir, "real-staging")
	must.NoError(t, os.Mkdir(staging, 0o755))
	node.mu.Lock()
	node.staged["victim"] = &stagedVolume{id: "victim", stagingPath: staging, targets: map[string]bool{}}
	node.mu.Unlock()
	for _, p := range []string{"some/path", outside, link, filepath.Join(staging, "sub")} {
		_, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "victim", VolumePath: p})
		mustInvalid(t, err, "NodeGetVolumeStats of a staged volume at "+p)
	}
	st, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "victim", VolumePath: staging})
	must.NoError(t, err)
	must.Positive(t, st.GetUsage()[0].GetTotal())
	node.mu.Lock()
	delete(node.staged, "victim")
	node.mu.Unlock()

	// An existing directory that is no target of the volume is not
	// removed by an unpublish; a missing one is unpublished already.
	_, err = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "victim", TargetPath: filepath.Join(outside, "keep")})
	mustInvalid(t, err, "unpublish of a foreign directory")
	_, err = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "victim", TargetPath: filepath.Join(dir, "never")})
	must.NoError(t, err)
	// An unstage at another path than the recorded one touches nothing.
	must.NoError(t, node.writePaths("victim", pathRecord{Staging: filepath.Join(dir, "real-staging")}))
	_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "victim", StagingTargetPath: outside})
	mustInvalid(t, err, "unstage at a foreign path")
	_, ok, err := node.readPaths("victim")
	must.NoError(t, err)
	must.True(t, ok, must.Sprint("a refused unstage forgot the real staging path"))
	_, err = os.Stat(filepath.Join(outside, "keep"))
	must.NoError(t, err)
}

// With --host-csi-dir, a path under it that leaves it through a symlink
// is refused.
func TestHostPathRefusesSymlinkEscape(t *testing.T) {
	t.Parallel()
	_, node := testServices(t)
	base := t.TempDir()
	outside := t.TempDir()
	must.NoError(t, os.Symlink(outside, filepath.Join(base, "per-alloc")))
	node.cfg.Paths = PathMapper{HostDir: base}
	_, err := node.hostPath("target_path", "/local/csi/per-alloc/x/target")
	mustInvalid(t, err, "escape through a symlinked parent")
	h, err := node.hostPath("target_path", "/local/csi/staging/db/rw")
	must.NoError(t, err)
	must.Eq(t, filepath.Join(base, "staging/db/rw"), h)
}

// checkNodePaths asserts the property for one input: an accepted id
// builds files only inside the state directory, and an accepted path is
// absolute, clean, free of "..", and outside the state directory.
func checkNodePaths(t *testing.T, node *Node, id, p string) {
	if rpc.CheckVolumeID("volume_id", id) == nil {
		for _, f := range []string{node.fuseDir(id), node.pathFile(id), filepath.Join(node.cfg.StateDir, "stage", id+".json")} {
			if !within(f, node.cfg.StateDir) || f == node.cfg.StateDir || filepath.Clean(f) != f {
				t.Fatalf("id %q builds %q outside %q", id, f, node.cfg.StateDir)
			}
		}
	}
	h, err := node.hostPath("target_path", p)
	if err != nil {
		if status.Code(err) != codes.InvalidArgument && status.Code(err) != codes.Internal {
			t.Fatalf("path %q: %v", p, err)
		}
		return
	}
	if !filepath.IsAbs(h) || filepath.Clean(h) != h || strings.Contains(h, "/../") || within(h, node.cfg.StateDir) {
		t.Fatalf("path %q accepted as %q", p, h)
	}
}

// FuzzNodePaths: no id or path a request carries makes the node act
// outside its own directories (make fuzz; seeds in testdata/fuzz).
func FuzzNodePaths(f *testing.F) {
	for _, id := range hostileIDs {
		f.Add(id, "/local/csi/staging/"+id)
	}
	for _, p := range hostilePaths {
		f.Add("victim", p)
	}
	f.Add("victim", "/local/csi/../../etc")
	_, node := testServices(f)
	node.cfg.Paths = PathMapper{HostDir: "/var/lib/nomad/client/csi/node/saddlebag"}
	f.Fuzz(func(t *testing.T, id, p string) { checkNodePaths(t, node, id, p) })
}
