package node

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/proto"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin"
)

// keyRecorder is a stand-in for Consul's HTTP API that records every KV
// key asked for and answers that nothing exists.
type keyRecorder struct {
	mu   sync.Mutex
	keys []string
}

func (k *keyRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The key as Consul would see it after its HTTP layer decoded (and
	// would have cleaned) the path.
	if key, ok := strings.CutPrefix(r.URL.Path, "/v1/kv/"); ok {
		k.mu.Lock()
		k.keys = append(k.keys, key)
		k.mu.Unlock()
	}
	w.Header().Set("X-Consul-Index", "1")
	http.NotFound(w, r)
}

func (k *keyRecorder) take() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := k.keys
	k.keys = nil
	return out
}

// keyAllowed says whether key is one a request may make the plugin ask
// Consul for: the leadership lock, the listings of nodes and volumes, a
// node record or a volume's keys, each with exactly one valid name
// segment.
func keyAllowed(key string) bool {
	switch key {
	case "saddlebag/leader", "saddlebag/nodes/", "saddlebag/volumes/": // the lock, and the two listings
		return true
	}
	if rest, ok := strings.CutPrefix(key, "saddlebag/nodes/"); ok {
		return leader.ValidateNodeName(rest) == nil
	}
	rest, ok := strings.CutPrefix(key, "saddlebag/volumes/")
	if !ok {
		return false
	}
	id, suffix, _ := strings.Cut(rest, "/")
	return leader.ValidateName("", id) == nil && (suffix == "" || suffix == "primary" || suffix == "insync")
}

// FuzzRPCRequests decodes arbitrary bytes as each CSI request that
// carries an id or a path, calls the handler with it (a standby
// controller and a node whose Consul is keyRecorder), and checks the
// property: no request makes the plugin ask Consul for a key outside its
// layout, and no file appears in the working directory (where relative
// paths would land) besides the node's state directory.
func FuzzRPCRequests(f *testing.F) {
	seeds := []proto.Message{
		&csi.DeleteVolumeRequest{VolumeId: "x/../victim"},
		&csi.ValidateVolumeCapabilitiesRequest{VolumeId: "victim%2F..", VolumeCapabilities: []*csi.VolumeCapability{testCap}},
		&csi.ControllerPublishVolumeRequest{VolumeId: "victim", NodeId: "../leader", VolumeCapability: testCap},
		&csi.NodeStageVolumeRequest{VolumeId: "victim", StagingTargetPath: "../../etc", VolumeCapability: testCap},
		&csi.NodeUnpublishVolumeRequest{VolumeId: "victim", TargetPath: "/tmp/x/../y"},
		&csi.NodeGetVolumeStatsRequest{VolumeId: "victim/..", VolumePath: "some/path"},
		&csi.ListVolumesRequest{StartingToken: "after:../x"},
	}
	for i, m := range seeds {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	rec := &keyRecorder{}
	srv := httptest.NewServer(rec)
	f.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	c, err := leader.NewClient(leader.ConsulConfig{Address: u.Host}, nil)
	if err != nil {
		f.Fatal(err)
	}
	a, err := leader.NewAgent(leader.AgentConfig{Client: c, Node: "n1"})
	if err != nil {
		f.Fatal(err)
	}
	ctrl, err := plugin.NewController(plugin.ControllerConfig{Client: c, Agent: a})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(ctrl.Close)
	root := f.TempDir()
	node, err := New(Config{Agent: a, Client: c, NodeID: "n1", StateDir: filepath.Join(root, "state")})
	if err != nil {
		f.Fatal(err)
	}
	type call struct {
		msg func() proto.Message
		do  func(ctx context.Context, m proto.Message)
	}
	calls := []call{
		{func() proto.Message { return &csi.DeleteVolumeRequest{} }, func(ctx context.Context, m proto.Message) {
			_, _ = ctrl.DeleteVolume(ctx, m.(*csi.DeleteVolumeRequest))
		}},
		{func() proto.Message { return &csi.ValidateVolumeCapabilitiesRequest{} }, func(ctx context.Context, m proto.Message) {
			_, _ = ctrl.ValidateVolumeCapabilities(ctx, m.(*csi.ValidateVolumeCapabilitiesRequest))
		}},
		{func() proto.Message { return &csi.ControllerPublishVolumeRequest{} }, func(ctx context.Context, m proto.Message) {
			_, _ = ctrl.ControllerPublishVolume(ctx, m.(*csi.ControllerPublishVolumeRequest))
		}},
		{func() proto.Message { return &csi.NodeStageVolumeRequest{} }, func(ctx context.Context, m proto.Message) {
			_, _ = node.NodeStageVolume(ctx, m.(*csi.NodeStageVolumeRequest))
		}},
		{func() proto.Message { return &csi.NodeUnpublishVolumeRequest{} }, func(ctx context.Context, m proto.Message) {
			_, _ = node.NodeUnpublishVolume(ctx, m.(*csi.NodeUnpublishVolumeRequest))
		}},
		{func() proto.Message { return &csi.NodeGetVolumeStatsRequest{} }, func(ctx context.Context, m proto.Message) {
			_, _ = node.NodeGetVolumeStats(ctx, m.(*csi.NodeGetVolumeStatsRequest))
		}},
		{func() proto.Message { return &csi.ListVolumesRequest{} }, func(ctx context.Context, m proto.Message) {
			_, _ = ctrl.ListVolumes(ctx, m.(*csi.ListVolumesRequest))
		}},
		{func() proto.Message { return &csi.ControllerUnpublishVolumeRequest{} }, func(ctx context.Context, m proto.Message) {
			_, _ = ctrl.ControllerUnpublishVolume(ctx, m.(*csi.ControllerUnpublishVolumeRequest))
		}},
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		cl := calls[int(which)%len(calls)]
		m := cl.msg()
		if proto.Unmarshal(data, m) != nil {
			return
		}
		// Relative paths resolve under root, the working directory for
		// the call, where nothing but the node's state directory may
		// appear.
		t.Chdir(root)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cl.do(ctx, m)
		for _, k := range rec.take() {
			if !keyAllowed(k) {
				t.Fatalf("%T %v asked consul for key %q", m, m, k)
			}
		}
		entries, err := os.ReadDir(root)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Name() != "state" {
				t.Fatalf("%T %v created %s", m, m, filepath.Join(root, e.Name()))
			}
		}
	})
}
