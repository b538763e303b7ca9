package reconcile

import (
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/scheduler"
)

func node(name string, healthy bool, free int64, labels map[string]string) leader.NodeState {
	return leader.NodeState{NodeRecord: leader.NodeRecord{Node: name, FreeBytes: free, Labels: labels}, Healthy: healthy}
}

// The scheduler sees every node with its topology segments, counts the
// replicas each holds over every record except lost ones, and learns when
// an unhealthy node went down; a healthy node is never "down since".
func TestSchedulerNodes(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	nodes := []leader.NodeState{
		node("n1", true, 10, map[string]string{"rack": "a"}),
		node("n2", false, 20, nil),
		node("n3", true, 30, nil),
	}
	vols := []leader.VolumeRecord{
		{ID: "v1", Replicas: []leader.ReplicaRecord{{Node: "n1", State: leader.ReplicaReady}, {Node: "n2", State: leader.ReplicaLost},
			{Node: "n3", State: leader.ReplicaAdding}}},
		{ID: "v2", Replicas: []leader.ReplicaRecord{{Node: "n1", State: leader.ReplicaReady}, {Node: "n2", State: leader.ReplicaReady}}},
	}
	down := map[string]time.Time{"n2": t0, "n3": t0}
	got := SchedulerNodes(nodes, vols, down)
	must.Eq(t, []scheduler.Node{
		{ID: "n1", Healthy: true, FreeBytes: 10, Labels: map[string]string{"rack": "a", scheduler.TopologyNodeKey: "n1"}, Replicas: 2},
		{ID: "n2", FreeBytes: 20, Labels: map[string]string{scheduler.TopologyNodeKey: "n2"}, Replicas: 1, DownSince: t0},
		{ID: "n3", Healthy: true, FreeBytes: 30, Labels: map[string]string{scheduler.TopologyNodeKey: "n3"}, Replicas: 1},
	}, got)
	must.Eq(t, map[string]string{"rack": "a"}, nodes[0].Labels, must.Sprint("a node's labels were modified"))

	// Without downSince (CreateVolume, GetCapacity) no node has a time.
	for _, n := range SchedulerNodes(nodes, vols, nil) {
		must.True(t, n.DownSince.IsZero())
	}
}

func TestNewRefusesAnIncompleteConfig(t *testing.T) {
	t.Parallel()
	c, err := leader.NewClient(leader.ConsulConfig{Address: "127.0.0.1:1"}, nil)
	must.NoError(t, err)
	lock := func(string) func() { return func() {} }
	ok := Config{Client: c, TryLock: lock, ReplicaTimeout: time.Second, Grace: time.Minute, CreateTimeout: time.Minute}
	_, err = New(ok)
	must.NoError(t, err)
	for name, mutate := range map[string]func(*Config){
		"no client":          func(c *Config) { c.Client = nil },
		"no locks":           func(c *Config) { c.TryLock = nil },
		"no replica timeout": func(c *Config) { c.ReplicaTimeout = 0 },
		"no grace":           func(c *Config) { c.Grace = 0 },
		"no create timeout":  func(c *Config) { c.CreateTimeout = -time.Second },
	} {
		cfg := ok
		mutate(&cfg)
		_, err := New(cfg)
		must.ErrorIs(t, err, leader.ErrInvalid, must.Sprint(name))
	}
}
