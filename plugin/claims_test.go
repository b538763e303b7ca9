package plugin

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
)

// fakeClaims is a Nomad whose dead claims the test sets; Detach fails
// while failDetach is set, and otherwise drops the claim.
type fakeClaims struct {
	changes chan struct{}

	mu         sync.Mutex
	dead       []DeadClaim
	failDetach bool
	detached   []DeadClaim
	detachTry  int
}

func (f *fakeClaims) Changes(context.Context) <-chan struct{} { return f.changes }

func (f *fakeClaims) DeadClaims(context.Context) ([]DeadClaim, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]DeadClaim(nil), f.dead...), nil
}

func (f *fakeClaims) Detach(_ context.Context, dc DeadClaim) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.detachTry++
	if f.failDetach {
		return errors.New("nomad said no")
	}
	for i, d := range f.dead {
		if d == dc {
			f.detached = append(f.detached, d)
			f.dead = append(f.dead[:i], f.dead[i+1:]...)
			break
		}
	}
	return nil
}

func (f *fakeClaims) state() (detached []DeadClaim, tries int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]DeadClaim(nil), f.detached...), f.detachTry
}

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

// A dead claim Nomad reports is detached on the next change Nomad
// reports, not on the (long) periodic pass; a failed detach is retried.
func TestReleaseClaimsOnChange(t *testing.T) {
	ctrl, _ := testServices(t)
	f := &fakeClaims{changes: make(chan struct{})}
	ctrl.cfg.Claims = f
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctrl.releaseClaims(ctx, time.Hour)
	}()
	defer func() { cancel(); <-done }()

	// The first pass runs at once and finds nothing.
	dc := DeadClaim{Volume: "v1", NodeID: "node-a", Alloc: "alloc-1"}
	f.mu.Lock()
	f.dead, f.failDetach = []DeadClaim{dc}, true
	f.mu.Unlock()
	f.changes <- struct{}{}
	waitUntil(t, 5*time.Second, "a detach attempt", func() bool { _, n := f.state(); return n >= 1 })
	detached, _ := f.state()
	must.SliceEmpty(t, detached)

	f.mu.Lock()
	f.failDetach = false
	f.mu.Unlock()
	f.changes <- struct{}{}
	waitUntil(t, 5*time.Second, "the claim detached", func() bool { d, _ := f.state(); return len(d) == 1 })
	detached, _ = f.state()
	must.Eq(t, []DeadClaim{dc}, detached)
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
