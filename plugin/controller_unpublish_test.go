package plugin

import (
	"context"
	"net"
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
)

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ControllerUnpublishVolume of the primary's node, when Consul reports
// that node failed, records the fence and returns without waiting for
// the node to let go of the lease (the next primary's NodeStageVolume
// waits for it); for a healthy node it still waits, up to FenceWait.
func TestUnpublishFailedNodeReturnsOnceFenced(t *testing.T) {
	dev := testcluster.Dev(t, testcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client := func() *leader.Client { return devClient(t, dev.HTTPAddr) }
	agent := func(c *leader.Client, node, service string) *leader.Agent { return runDevAgent(t, c, node, service) }
	cc := client()
	ctrl, err := NewController(ControllerConfig{Client: cc, Agent: agent(cc, "c1", leader.ControllerService), FenceWait: 3 * time.Second})
	must.NoError(t, err)
	lead, err := ctrl.cfg.Agent.AcquireLeadership(ctx, "")
	must.NoError(t, err)
	ctrl.mu.Lock()
	ctrl.lease = lead
	ctrl.mu.Unlock()
	nc := client()
	n1 := agent(nc, "n1", leader.NodeService)
	n1Healthy := func() (healthy, known bool) {
		nodes, err := cc.ListNodes(ctx)
		for _, n := range nodes {
			if err == nil && n.Node == "n1" {
				return n.Healthy, true
			}
		}
		return false, false
	}
	waitUntil(t, 30*time.Second, "n1 healthy", func() bool { h, _ := n1Healthy(); return h })
	rec := leader.VolumeRecord{ID: "v1", Name: "v1", State: leader.VolumeReady, Published: []string{"n1"},
		Spec: leader.VolumeSpec{SizeBytes: 1 << 20, Replicas: 1}}
	_, err = cc.PutVolume(ctx, rec, 0, lead)
	must.NoError(t, err)
	prim, err := n1.AcquirePrimary(ctx, "v1")
	must.NoError(t, err)
	defer prim.Release(context.Background())
	unpublish := &csi.ControllerUnpublishVolumeRequest{VolumeId: "v1", NodeId: "n1"}

	// Healthy, and nobody follows the record to release the lease: the
	// call waits FenceWait and says the node still holds the volume.
	start := time.Now()
	_, err = ctrl.ControllerUnpublishVolume(ctx, unpublish)
	must.Error(t, err)
	must.StrContains(t, err.Error(), "still holds volume v1")
	must.GreaterEq(t, 3*time.Second, time.Since(start))

	// Consul reports n1 failed (a critical check on its service that
	// its session is not tied to, so the lease stays held): the call
	// returns once the fence is recorded.
	must.NoError(t, nc.API().Agent().EnableServiceMaintenance(n1.ServiceID(), "test: node failed"))
	waitUntil(t, 30*time.Second, "n1 unhealthy", func() bool { h, known := n1Healthy(); return known && !h })
	_, err = ctrl.ControllerUnpublishVolume(ctx, unpublish)
	must.NoError(t, err)
	got, _, err := cc.GetVolume(ctx, "v1")
	must.NoError(t, err)
	must.Eq(t, prim.Epoch(), got.Fenced["n1"])
	must.SliceEmpty(t, got.Published)
	holder, err := cc.ReadPrimary(ctx, "v1")
	must.NoError(t, err)
	must.Eq(t, "n1", holder.Node, must.Sprint("the test needs the lease still held, or it proves nothing"))
}

func devClient(t *testing.T, addr string) *leader.Client {
	t.Helper()
	c, err := leader.NewClient(leader.ConsulConfig{Address: addr}, hclog.NewNullLogger())
	must.NoError(t, err)
	return c
}

// runDevAgent runs a leader.Agent until the test ends and waits for its
// session.
func runDevAgent(t *testing.T, c *leader.Client, node, service string) *leader.Agent {
	t.Helper()
	a, err := leader.NewAgent(leader.AgentConfig{Client: c, Node: node, Service: service, TTL: 3 * time.Second, LockDelay: time.Second,
		Address: "127.0.0.1", Port: 7400,
		Record: func() leader.NodeRecord { return leader.NodeRecord{ReplicaAddr: "127.0.0.1:7400"} }})
	must.NoError(t, err)
	actx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = a.Run(actx) })
	t.Cleanup(func() { stop(); wg.Wait() })
	waitUntil(t, 30*time.Second, node+"'s session", func() bool { return a.SessionID() != "" })
	return a
}

// A standby forwards to the controller the leadership lock names now,
// not to the one it cached: an active controller cut off from the
// network (its connection accepts and never answers) that has lost the
// lock is not called again. Before issue 12 the cached connection was
// used until a call on it failed, and a call on a black-holed connection
// hangs until the caller's deadline: Nomad's volume watcher, which sends
// ControllerUnpublishVolume to free a lost allocation's claim, waited on
// it for minutes.
func TestForwardFollowsTheLockNotACachedConnection(t *testing.T) {
	dev := testcluster.Dev(t, testcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The cut-off active controller: accepts connections, answers nothing.
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	defer hole.Close()
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	oc := devClient(t, dev.HTTPAddr)
	old := runDevAgent(t, oc, "c-old", leader.ControllerService)
	lead, err := old.AcquireLeadership(ctx, hole.Addr().String())
	must.NoError(t, err)

	sc := devClient(t, dev.HTTPAddr)
	standby, err := NewController(ControllerConfig{Client: sc, Agent: runDevAgent(t, sc, "c-standby", leader.ControllerService),
		ForwardAddr: "127.0.0.1:1"})
	must.NoError(t, err)
	defer standby.Close()
	unpublish := &csi.ControllerUnpublishVolumeRequest{VolumeId: "v1", NodeId: "n1"}

	// While the lock names it, the call goes there and hangs to its deadline.
	cctx, ccancel := context.WithTimeout(ctx, time.Second)
	_, err = standby.ControllerUnpublishVolume(cctx, unpublish)
	ccancel()
	must.Eq(t, codes.DeadlineExceeded, status.Code(err), must.Sprint(err))

	// It loses the lock: the standby says there is no active controller
	// at once, instead of calling the cached connection again.
	must.NoError(t, lead.Release(ctx))
	start := time.Now()
	cctx, ccancel = context.WithTimeout(ctx, 10*time.Second)
	_, err = standby.ControllerUnpublishVolume(cctx, unpublish)
	ccancel()
	must.Eq(t, codes.Unavailable, status.Code(err), must.Sprint(err))
	must.Less(t, 5*time.Second, time.Since(start))
}
