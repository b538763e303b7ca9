package leader_test

import (
	"errors"
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/leader"
)

// TestResyncRecord: written only while the volume's record exists, read
// back as written, deleted with the volume; and replica addresses map to node names.
func TestResyncRecord(t *testing.T) {
	dev := devAgent(t)
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{})
	ctx := ctxTimeout(t, 30*time.Second)
	rec := leader.ResyncRecord{Epoch: 4, Node: "n1", Updated: time.Now().UTC().Truncate(time.Second),
		Replicas: []leader.ReplicaProgress{{Addr: "127.0.0.1:1", State: "in-sync"},
			{Addr: "127.0.0.1:2", State: "resyncing", Mode: "bitmap", TotalBytes: 100, DoneBytes: 40, Percent: 40, BytesPerSec: 10, ETASeconds: 6}}}
	err := c.PutResync(ctx, "v1", rec)
	must.True(t, errors.Is(err, leader.ErrNotFound), must.Sprintf("written without a volume record: %v", err))
	_, err = c.ReadResync(ctx, "v1")
	must.True(t, errors.Is(err, leader.ErrNotFound))

	idx, err := c.PutVolume(ctx, leader.VolumeRecord{ID: "v1", State: leader.VolumeReady}, 0, nil)
	must.NoError(t, err)
	must.NoError(t, c.PutResync(ctx, "v1", rec))
	got, err := c.ReadResync(ctx, "v1")
	must.NoError(t, err)
	must.Eq(t, rec, got)
	vols, err := c.ListVolumes(ctx)
	must.NoError(t, err)
	must.Len(t, 1, vols) // the record's key is not a volume
	must.NoError(t, c.DeleteVolume(ctx, "v1", idx, nil))
	_, err = c.ReadResync(ctx, "v1")
	must.True(t, errors.Is(err, leader.ErrNotFound), must.Sprint("the volume's delete removes its resync record"))

	runAgent(t, c, "n7", nil)
	waitFor(t, 10*time.Second, "node record", func() bool {
		m, err := c.ReplicaNodes(ctx)
		return err == nil && len(m) == 1
	})
	m, err := c.ReplicaNodes(ctx)
	must.NoError(t, err)
	for _, n := range m {
		must.Eq(t, "n7", n)
	}
}

// TestClassifyVolumeNamed: the volume check's note names nodes.
func TestClassifyVolumeNamed(t *testing.T) {
	names := map[string]string{"10.0.0.1:7400": "node1", "10.0.0.3:7400": "node3"}
	h := leader.ClassifyVolumeNamed(2, []string{"10.0.0.1:7400", "10.0.0.3:7400"}, []string{"10.0.0.1:7400", "10.0.0.3:7400"}, names)
	must.Eq(t, leader.Healthy, h.State)
	must.Eq(t, "in sync 2 of 2: node1, node3", h.Note)
	h = leader.ClassifyVolumeNamed(2, []string{"10.0.0.1:7400", "10.0.0.9:7400"}, []string{"10.0.0.1:7400"}, names)
	must.Eq(t, leader.Degraded, h.State)
	must.Eq(t, "in sync 1 of 2: node1; not in sync: 10.0.0.9:7400", h.Note)
	h = leader.ClassifyVolumeNamed(2, []string{"10.0.0.1:7400"}, nil, names)
	must.Eq(t, leader.Offline, h.State)
	must.Eq(t, "no in-sync replica; in sync 0 of 2: none; not in sync: node1", h.Note)
}
