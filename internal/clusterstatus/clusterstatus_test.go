package clusterstatus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
)

// TestReadFromConsul: records written as the controller and the nodes
// write them, read back by Read from a real Consul: the replica states
// of a volume nobody serves (in sync by the in-sync record, a
// replacement being added, a lost one), a progress record of another
// epoch ignored, node records with their health, and an unknown volume.
func TestReadFromConsul(t *testing.T) {
	dev := testcluster.Dev(t, testcluster.Options{})
	c, err := leader.NewClient(leader.ConsulConfig{Address: dev.HTTPAddr}, hclog.NewNullLogger())
	must.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = c.PutVolume(ctx, leader.VolumeRecord{ID: "v1", Name: "v1", State: leader.VolumeReady,
		Spec: leader.VolumeSpec{SizeBytes: 1 << 30, Replicas: 2, FSType: "ext4"},
		Replicas: []leader.ReplicaRecord{{Node: "n1", Addr: "10.0.0.1:7400", State: leader.ReplicaReady},
			{Node: "n2", Addr: "10.0.0.2:7400", State: leader.ReplicaAdding}, {Node: "n3", Addr: "10.0.0.3:7400", State: leader.ReplicaLost}}}, 0, nil)
	must.NoError(t, err)
	must.NoError(t, c.InitInSync(ctx, "v1", []string{"10.0.0.1:7400"}))
	must.NoError(t, c.PutResync(ctx, "v1", leader.ResyncRecord{Epoch: 9, Node: "n1",
		Replicas: []leader.ReplicaProgress{{Addr: "10.0.0.2:7400", State: "resyncing", Percent: 50}}}))
	_, err = c.API().KV().Put(&api.KVPair{Key: c.Keys().Node("n1"), Value: []byte(`{"node":"n1","replica_addr":"10.0.0.1:7400","free_bytes":1024}`)}, nil)
	must.NoError(t, err)

	st, err := Read(ctx, c, "")
	must.NoError(t, err)
	must.Len(t, 1, st.Nodes)
	must.Eq(t, "n1", st.Nodes[0].Name)
	must.False(t, st.Nodes[0].Healthy) // no saddlebag-node service registered
	must.Len(t, 1, st.Volumes)
	v := st.Volumes[0]
	must.Eq(t, NotStaged, v.Health)
	must.Eq(t, "", v.Primary)
	must.Eq(t, 1, v.InSync)
	must.Eq(t, 0.0, v.ProgressAge) // the progress record is not the current primary's
	must.Eq(t, []string{InSync, Missing, Lost}, []string{v.Replicas[0].State, v.Replicas[1].State, v.Replicas[2].State})
	must.StrContains(t, v.Replicas[1].Detail, "a replacement being copied")
	must.StrContains(t, v.Replicas[2].Detail, "being replaced")
	must.Nil(t, v.Replicas[1].Resync)

	one, err := Read(ctx, c, "v1")
	must.NoError(t, err)
	must.Eq(t, v.Replicas, one.Volumes[0].Replicas)
	_, err = Read(ctx, c, "nope")
	must.True(t, errors.Is(err, leader.ErrNotFound))
}
