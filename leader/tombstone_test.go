package leader_test

import (
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/leader"
)

// DeleteVolumeLeaving deletes the record and writes the tombstones in one
// transaction: with a stale index neither happens; DeleteTombstone is
// check-and-set and needs the leadership.
func TestTombstones(t *testing.T) {
	dev := devAgent(t)
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{})
	ctrl := func(cfg *leader.AgentConfig) { cfg.Service = leader.ControllerService; cfg.Record = nil }
	a1 := runAgent(t, c, "c1", ctrl)
	ctx := ctxTimeout(t, time.Minute)
	lead, err := a1.AcquireLeadership(ctx, "")
	must.NoError(t, err)

	rec := leader.VolumeRecord{ID: "v1", Name: "v1", State: leader.VolumeDeleting,
		Replicas: []leader.ReplicaRecord{{Node: "n1", Addr: "127.0.0.1:1", State: "ready"}, {Node: "n2", Addr: "127.0.0.1:2", State: "lost"}}}
	index, err := c.PutVolume(ctx, rec, 0, lead)
	must.NoError(t, err)
	orphans := rec.Replicas

	err = c.DeleteVolumeLeaving(ctx, "v1", index-1, lead, orphans)
	must.ErrorIs(t, err, leader.ErrConflict)
	_, _, err = c.GetVolume(ctx, "v1")
	must.NoError(t, err, must.Sprint("a refused delete deleted the record"))
	ts, err := c.ListTombstones(ctx)
	must.NoError(t, err)
	must.SliceEmpty(t, ts, must.Sprint("a refused delete wrote tombstones"))

	must.NoError(t, c.DeleteVolumeLeaving(ctx, "v1", index, lead, orphans))
	_, _, err = c.GetVolume(ctx, "v1")
	must.ErrorIs(t, err, leader.ErrNotFound)
	ts, err = c.ListTombstones(ctx)
	must.NoError(t, err)
	must.Len(t, 2, ts)
	must.Eq(t, "n1", ts[0].Node)
	must.Eq(t, "127.0.0.1:2", ts[1].Addr)
	must.Eq(t, "v1", ts[1].Volume)
	must.Eq(t, c.Keys().Tombstone("v1", "n2"), c.Keys().Tombstones()+"v1/n2")

	stale := ts[0]
	stale.Index--
	must.ErrorIs(t, c.DeleteTombstone(ctx, stale, lead), leader.ErrConflict)
	must.NoError(t, c.DeleteTombstone(ctx, ts[0], lead))
	must.NoError(t, lead.Release(ctx))
	must.Error(t, c.DeleteTombstone(ctx, ts[1], lead), must.Sprint("deleted without the leadership"))
	ts, err = c.ListTombstones(ctx)
	must.NoError(t, err)
	must.Len(t, 1, ts)
	must.Eq(t, "n2", ts[0].Node)
}
