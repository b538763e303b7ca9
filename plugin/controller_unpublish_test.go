package plugin

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

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
	client := func() *leader.Client {
		c, err := leader.NewClient(leader.ConsulConfig{Address: dev.HTTPAddr}, hclog.NewNullLogger())
		must.NoError(t, err)
		return c
	}
	agent := func(c *leader.Client, node, service string) *leader.Agent {
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
