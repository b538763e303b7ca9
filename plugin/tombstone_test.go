package plugin

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin/reconcile"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/replica"
)

// testNode is a storage node of the tombstone test: a replica server
// over a data directory that outlives it, and the node agent that
// registers it in Consul; each can be stopped and started again.
type testNode struct {
	t       *testing.T
	name    string
	dir     string
	client  *leader.Client
	addr    string
	stopSrv func()
	stopAg  func()
}

func newTestNode(t *testing.T, client *leader.Client, name string) *testNode {
	n := &testNode{t: t, name: name, dir: t.TempDir(), client: client}
	n.startServer()
	n.startAgent()
	t.Cleanup(func() { n.stopAgent(); n.stopServer() })
	return n
}

func (n *testNode) startServer() {
	store, err := replica.OpenStore(n.dir, hclog.NewNullLogger())
	must.NoError(n.t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(n.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = replica.NewServer(store, hclog.NewNullLogger()).Serve(ctx, ln) })
	n.addr = ln.Addr().String()
	n.stopSrv = func() { cancel(); wg.Wait() }
}

func (n *testNode) stopServer() {
	if n.stopSrv != nil {
		n.stopSrv()
		n.stopSrv = nil
	}
}

func (n *testNode) startAgent() {
	addr := n.addr
	a, err := leader.NewAgent(leader.AgentConfig{Client: n.client, Node: n.name, Service: leader.NodeService, TTL: 3 * time.Second,
		LockDelay: time.Second, Address: "127.0.0.1", Port: 7400,
		Record: func() leader.NodeRecord {
			return leader.NodeRecord{ReplicaAddr: addr, CapacityBytes: 1 << 30, FreeBytes: 1 << 30}
		}})
	must.NoError(n.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = a.Run(ctx) })
	n.stopAg = func() { cancel(); wg.Wait() }
	waitUntil(n.t, 30*time.Second, n.name+"'s session", func() bool { return a.SessionID() != "" })
}

func (n *testNode) stopAgent() {
	if n.stopAg != nil {
		n.stopAg()
		n.stopAg = nil
	}
}

// holds reports whether the node's data directory holds volume id.
func (n *testNode) holds(id string) bool {
	_, err := os.Stat(filepath.Join(n.dir, id))
	return err == nil
}

func (n *testNode) healthy(ctx context.Context, c *leader.Client) bool {
	nodes, err := c.ListNodes(ctx)
	for _, s := range nodes {
		if err == nil && s.Node == n.name {
			return s.Healthy && s.ReplicaAddr == n.addr
		}
	}
	return false
}

// DeleteVolume with a replica on a node that is down finishes, leaving a
// tombstone; no replica of a volume with the same id goes to that node
// while the tombstone stands; when the node is back the controller removes
// the old replica and the tombstone. A node Consul reports healthy whose
// replica server does not answer still makes the delete Unavailable.
func TestDeleteVolumeWithNodeDownLeavesTombstone(t *testing.T) {
	dev := testcluster.Dev(t, testcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cc := devClient(t, dev.HTTPAddr)
	ctrl, err := NewController(ControllerConfig{Client: cc, Agent: runDevAgent(t, cc, "c1", leader.ControllerService),
		ReplicaTimeout: 2 * time.Second})
	must.NoError(t, err)
	lead, err := ctrl.cfg.Agent.AcquireLeadership(ctx, "")
	must.NoError(t, err)
	ctrl.mu.Lock()
	ctrl.lease = lead
	ctrl.mu.Unlock()

	n1, n2 := newTestNode(t, devClient(t, dev.HTTPAddr), "n1"), newTestNode(t, devClient(t, dev.HTTPAddr), "n2")
	waitUntil(t, 30*time.Second, "both nodes healthy", func() bool { return n1.healthy(ctx, cc) && n2.healthy(ctx, cc) })
	create := func(replicas string) (*csi.CreateVolumeResponse, error) {
		return ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "gone", Parameters: map[string]string{"replicas": replicas},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, VolumeCapabilities: []*csi.VolumeCapability{blockCap()}})
	}
	resp, err := create("2")
	must.NoError(t, err)
	id := resp.GetVolume().GetVolumeId()
	must.True(t, n1.holds(id) && n2.holds(id))

	// n2's replica server is gone but Consul says the node is healthy: a
	// transient failure, retried.
	n2.stopServer()
	_, err = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	must.Eq(t, codes.Unavailable, status.Code(err), must.Sprintf("err = %v", err))
	rec, _, err := cc.GetVolume(ctx, id)
	must.NoError(t, err)
	must.Eq(t, leader.VolumeDeleting, rec.State)
	ts, err := cc.ListTombstones(ctx)
	must.NoError(t, err)
	must.SliceEmpty(t, ts)

	// n2 is down for Consul too: the delete finishes, with a tombstone.
	n2.stopAgent()
	waitUntil(t, 30*time.Second, "n2 down", func() bool { return !n2.healthy(ctx, cc) })
	_, err = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	must.NoError(t, err)
	_, _, err = cc.GetVolume(ctx, id)
	must.ErrorIs(t, err, leader.ErrNotFound)
	must.False(t, n1.holds(id))
	must.True(t, n2.holds(id), must.Sprint("n2 was down: its replica is still there"))
	ts, err = cc.ListTombstones(ctx)
	must.NoError(t, err)
	must.Len(t, 1, ts)
	must.Eq(t, id, ts[0].Volume)
	must.Eq(t, "n2", ts[0].Node)
	// Deleted already: a repeated delete succeeds.
	_, err = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	must.NoError(t, err)

	// n2 is back, on another port, but the tombstone stands: a new volume
	// of the same name gets no replica there (the server would reuse the
	// old data), so two replicas do not fit on the two nodes.
	n2.startServer()
	n2.startAgent()
	waitUntil(t, 30*time.Second, "n2 healthy again", func() bool { return n2.healthy(ctx, cc) })
	_, err = create("2")
	must.Eq(t, codes.ResourceExhausted, status.Code(err), must.Sprintf("err = %v", err))
	resp, err = create("1")
	must.NoError(t, err)
	rec, _, err = cc.GetVolume(ctx, id)
	must.NoError(t, err)
	must.Len(t, 1, rec.Replicas)
	must.Eq(t, "n1", rec.Replicas[0].Node)

	// A pass of the controller's background loop with the new volume's
	// replica on n2 would be refused; delete the new volume first, then
	// the pass removes the old replica from n2 and the tombstone.
	_, err = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	must.NoError(t, err)
	must.True(t, n2.holds(id))
	nodes, err := cc.ListNodes(ctx)
	must.NoError(t, err)
	must.NoError(t, ctrl.reconciler().SweepTombstones(ctx, lead, reconcile.NodeMap(nodes)))
	must.False(t, n2.holds(id), must.Sprint("the orphan replica is removed once its node is back"))
	ts, err = cc.ListTombstones(ctx)
	must.NoError(t, err)
	must.SliceEmpty(t, ts)

	// With the tombstone gone, the name gets replicas on both nodes, and
	// n2's is a new, empty one.
	_, err = create("2")
	must.NoError(t, err)
	must.True(t, n1.holds(id) && n2.holds(id))
}

// A tombstone's node whose record lists a replica of a live volume of
// the same id (which no placement makes) keeps its replica: the sweep
// never deletes data a volume record names.
func TestSweepLeavesAReplicaARecordNames(t *testing.T) {
	dev := testcluster.Dev(t, testcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cc := devClient(t, dev.HTTPAddr)
	ctrl, err := NewController(ControllerConfig{Client: cc, Agent: runDevAgent(t, cc, "c1", leader.ControllerService),
		ReplicaTimeout: 2 * time.Second})
	must.NoError(t, err)
	lead, err := ctrl.cfg.Agent.AcquireLeadership(ctx, "")
	must.NoError(t, err)
	ctrl.mu.Lock()
	ctrl.lease = lead
	ctrl.mu.Unlock()
	n1 := newTestNode(t, devClient(t, dev.HTTPAddr), "n1")
	waitUntil(t, 30*time.Second, "n1 healthy", func() bool { return n1.healthy(ctx, cc) })

	resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "live", Parameters: map[string]string{"replicas": "1"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, VolumeCapabilities: []*csi.VolumeCapability{blockCap()}})
	must.NoError(t, err)
	id := resp.GetVolume().GetVolumeId()
	must.True(t, n1.holds(id))
	// A tombstone for the same volume on n1, written as a delete with n1
	// down would have (of another record, then the live one created).
	other := leader.VolumeRecord{ID: "other", Name: "other", State: leader.VolumeDeleting}
	index, err := cc.PutVolume(ctx, other, 0, lead)
	must.NoError(t, err)
	must.NoError(t, cc.DeleteVolumeLeaving(ctx, "other", index, lead, []leader.ReplicaRecord{{Node: "n1", Addr: n1.addr}}))
	ts, err := cc.ListTombstones(ctx)
	must.NoError(t, err)
	must.Len(t, 1, ts)
	ts[0].Volume = id // the sweep is handed the live volume's tombstone
	must.NoError(t, ctrl.reconciler().SweepTombstone(ctx, lead, ts[0], n1.addr))
	must.True(t, n1.holds(id), must.Sprint("a replica the live record names was deleted"))
}

// A replica re-replication replaced, on a node that is down when the
// replacement is in sync, is dropped from the record with a tombstone,
// and its data removed once its node is back.
func TestReplacedReplicaRemovedWhenItsNodeIsBack(t *testing.T) {
	dev := testcluster.Dev(t, testcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cc := devClient(t, dev.HTTPAddr)
	ctrl, err := NewController(ControllerConfig{Client: cc, Agent: runDevAgent(t, cc, "c1", leader.ControllerService),
		ReplicaTimeout: 2 * time.Second})
	must.NoError(t, err)
	lead, err := ctrl.cfg.Agent.AcquireLeadership(ctx, "")
	must.NoError(t, err)
	n1, n2, n3 := newTestNode(t, devClient(t, dev.HTTPAddr), "n1"), newTestNode(t, devClient(t, dev.HTTPAddr), "n2"),
		newTestNode(t, devClient(t, dev.HTTPAddr), "n3")
	const id = "moved"
	for _, n := range []*testNode{n1, n2, n3} {
		_, err := replication.CreateReplica(ctx, nil, n.addr, id, 1<<20, 2*time.Second)
		must.NoError(t, err)
	}
	// n2's replica was lost and n3's is its replacement; never served, so
	// n3's counts as in sync at once.
	rec := leader.VolumeRecord{ID: id, Name: id, State: leader.VolumeReady, Spec: leader.VolumeSpec{SizeBytes: 1 << 20, Replicas: 2},
		Replicas: []leader.ReplicaRecord{{Node: "n1", Addr: n1.addr, State: leader.ReplicaReady},
			{Node: "n2", Addr: n2.addr, State: leader.ReplicaLost}, {Node: "n3", Addr: n3.addr, State: leader.ReplicaAdding}}}
	_, err = cc.PutVolume(ctx, rec, 0, lead)
	must.NoError(t, err)

	n2.stopServer()
	n2.stopAgent()
	must.NoError(t, ctrl.reconciler().Finish(ctx, lead, id))
	rec, _, err = cc.GetVolume(ctx, id)
	must.NoError(t, err)
	must.Eq(t, []leader.ReplicaRecord{{Node: "n1", Addr: n1.addr, State: leader.ReplicaReady}, {Node: "n3", Addr: n3.addr, State: leader.ReplicaReady}}, rec.Replicas)
	ts, err := cc.ListTombstones(ctx)
	must.NoError(t, err)
	must.Len(t, 1, ts)
	must.Eq(t, "n2", ts[0].Node)
	must.True(t, n2.holds(id))

	// While n2 is down the pass leaves it; once it is back, the pass
	// removes its copy and the tombstone, and nothing else.
	nodes, err := cc.ListNodes(ctx)
	must.NoError(t, err)
	must.NoError(t, ctrl.reconciler().SweepTombstones(ctx, lead, reconcile.NodeMap(nodes)))
	must.True(t, n2.holds(id))
	n2.startServer()
	n2.startAgent()
	waitUntil(t, 30*time.Second, "n2 healthy again", func() bool { return n2.healthy(ctx, cc) })
	nodes, err = cc.ListNodes(ctx)
	must.NoError(t, err)
	must.NoError(t, ctrl.reconciler().SweepTombstones(ctx, lead, reconcile.NodeMap(nodes)))
	must.False(t, n2.holds(id))
	must.True(t, n1.holds(id) && n3.holds(id))
	ts, err = cc.ListTombstones(ctx)
	must.NoError(t, err)
	must.SliceEmpty(t, ts)
}
