package leader_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/leader"
)

// Concurrent writers of the in-sync record: every update survives; a
// writer with a stale index or epoch gets a typed conflict.
func TestInSyncConcurrentCASWriters(t *testing.T) {
	dev := devAgent(t)
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{})
	a := runAgent(t, c, "n1", nil)
	ctx := ctxTimeout(t, time.Minute)
	l, err := a.AcquirePrimary(ctx, "vol1")
	must.NoError(t, err)
	w := l.InSyncWriter("n1")

	const writers = 8
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			for j := range 3 {
				name := fmt.Sprintf("r%d-%d", i, j)
				_, errs[i] = w.Update(ctx, func(cur leader.InSyncRecord) leader.InSyncRecord {
					cur.Replicas = append(slices.Clone(cur.Replicas), name)
					return cur
				})
				if errs[i] != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		must.NoError(t, err)
	}
	rec, index, err := c.ReadInSync(ctx, "vol1")
	must.NoError(t, err)
	must.SliceLen(t, writers*3, rec.Replicas, must.Sprint("an update was lost"))
	must.Eq(t, l.Epoch(), rec.Epoch)
	must.Eq(t, "n1", rec.Node)

	// A writer holding a stale index loses with a clear, typed conflict.
	next, err := w.CompareAndSwap(ctx, leader.InSyncRecord{Epoch: l.Epoch(), Replicas: []string{"a:1"}}, index)
	must.NoError(t, err)
	_, err = w.CompareAndSwap(ctx, leader.InSyncRecord{Epoch: l.Epoch(), Replicas: []string{"b:1"}}, index)
	var conflict *leader.ConflictError
	must.True(t, errors.As(err, &conflict), must.Sprint(err))
	must.ErrorIs(t, err, leader.ErrConflict)
	must.Eq(t, index, conflict.Index)
	must.Eq(t, next, conflict.Current)
	must.Eq(t, c.Keys().InSync("vol1"), conflict.Key)
	// Creating a record that exists is a conflict too.
	_, err = w.CompareAndSwap(ctx, leader.InSyncRecord{Epoch: l.Epoch()}, 0)
	must.ErrorIs(t, err, leader.ErrConflict)
	// An engine of another epoch is refused.
	err = w.SetInSync(ctx, l.Epoch()+1, 1, []string{"a:1"})
	must.ErrorIs(t, err, leader.ErrConflict)
	got, err := c.RecordedInSync(ctx, "vol1")
	must.NoError(t, err)
	must.Eq(t, []string{"a:1"}, got.Replicas)

	// The next primary (higher epoch) takes over; the old lease's writer
	// is refused, typed, and cannot touch the new record.
	must.NoError(t, l.Release(ctx))
	l2, err := a.AcquirePrimary(ctx, "vol1")
	must.NoError(t, err)
	must.Greater(t, l.Epoch(), l2.Epoch())
	must.NoError(t, l2.InSyncWriter("n1").SetInSync(ctx, l2.Epoch(), 1, []string{"b:1", "a:1"}))
	err = w.SetInSync(ctx, l.Epoch(), 1, []string{"stale:1"})
	must.True(t, errors.As(err, &conflict), must.Sprint(err))
	must.Eq(t, l.Epoch(), conflict.Epoch)
	must.Eq(t, l2.Epoch(), conflict.CurrentEpoch)
	_, err = w.CompareAndSwap(ctx, leader.InSyncRecord{Epoch: l.Epoch(), Replicas: []string{"stale:1"}}, conflict.Current)
	must.ErrorIs(t, err, leader.ErrLeaseReleased)
	rec, _, err = c.ReadInSync(ctx, "vol1")
	must.NoError(t, err)
	must.Eq(t, []string{"a:1", "b:1"}, rec.Replicas)
	must.Eq(t, l2.Epoch(), rec.Epoch)
	must.True(t, rec.Promotable("a:1"))
	must.False(t, rec.Promotable("stale:1"))
}

// An in-sync write is refused once the session behind the lease is gone,
// even before the lease's own confirmation notices.
func TestInSyncWriteRefusedAfterSessionInvalidated(t *testing.T) {
	dev := devAgent(t)
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{})
	a := runAgent(t, c, "n1", nil)
	ctx := ctxTimeout(t, time.Minute)
	l, err := a.AcquirePrimary(ctx, "vol1")
	must.NoError(t, err)
	_, err = c.API().Session().Destroy(l.Session(), nil)
	must.NoError(t, err)
	err = l.InSyncWriter("n1").SetInSync(ctx, l.Epoch(), 1, []string{"a:1"})
	must.ErrorIs(t, err, leader.ErrLeaseLost)
	_, _, err = c.ReadInSync(ctx, "vol1")
	must.ErrorIs(t, err, leader.ErrNotFound)
	select {
	case <-l.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("lease not reported lost")
	}
}

func TestControllerLeadershipAndVolumeRecords(t *testing.T) {
	dev := devAgent(t)
	c := newClient(t, dev.HTTPAddr, leader.ConsulConfig{})
	ctrl := func(cfg *leader.AgentConfig) { cfg.Service = leader.ControllerService; cfg.Record = nil }
	a1, a2 := runAgent(t, c, "c1", ctrl), runAgent(t, c, "c2", ctrl)
	ctx := ctxTimeout(t, time.Minute)

	_, err := c.ReadLeader(ctx)
	must.ErrorIs(t, err, leader.ErrNotFound, must.Sprint("nobody holds the lock yet"))
	lead, err := a1.AcquireLeadership(ctx, "127.0.0.1:7411")
	must.NoError(t, err)
	must.Eq(t, c.Keys().Leader(), lead.Key())
	active, err := c.ReadLeader(ctx)
	must.NoError(t, err)
	must.Eq(t, leader.LeaderRecord{Node: "c1", ForwardAddr: "127.0.0.1:7411"}, active.LeaderRecord)
	must.Eq(t, lead.Epoch(), active.Epoch)
	must.Eq(t, lead.Session(), active.Session)
	waitCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = a2.AcquireLeadership(waitCtx, "127.0.0.1:7412")
	cancel()
	must.ErrorIs(t, err, context.DeadlineExceeded, must.Sprint("a second controller became leader"))

	rec := leader.VolumeRecord{ID: "vol1", Spec: leader.VolumeSpec{SizeBytes: 1 << 30, Replicas: 2, FSType: "ext4"},
		Replicas: []leader.ReplicaRecord{{Node: "n1", Addr: "a:1", State: "in-sync"}}}
	idx, err := c.PutVolume(ctx, rec, 0, lead)
	must.NoError(t, err)
	must.Positive(t, idx)
	_, err = c.PutVolume(ctx, rec, 0, lead)
	must.ErrorIs(t, err, leader.ErrConflict, must.Sprint("create of an existing volume"))

	got, gotIdx, err := c.GetVolume(ctx, "vol1")
	must.NoError(t, err)
	must.Eq(t, idx, gotIdx)
	must.Eq(t, rec.Spec, got.Spec)
	must.False(t, got.Created.IsZero())

	got.Replicas = append(got.Replicas, leader.ReplicaRecord{Node: "n2", Addr: "b:1", State: "syncing"})
	idx2, err := c.PutVolume(ctx, got, gotIdx, lead)
	must.NoError(t, err)
	_, err = c.PutVolume(ctx, got, gotIdx, lead)
	var conflict *leader.ConflictError
	must.True(t, errors.As(err, &conflict))
	must.Eq(t, idx2, conflict.Current)

	// Other keys under the volume are not volume records.
	pl, err := a1.AcquirePrimary(ctx, "vol1")
	must.NoError(t, err)
	must.NoError(t, pl.InSyncWriter("c1").SetInSync(ctx, pl.Epoch(), 1, []string{"a:1"}))
	list, err := c.ListVolumes(ctx)
	must.NoError(t, err)
	must.SliceLen(t, 1, list)
	must.Eq(t, "vol1", list[0].ID)

	// Once leadership is lost, writes under it are refused.
	must.NoError(t, lead.Release(ctx))
	_, err = c.ReadLeader(ctx)
	must.ErrorIs(t, err, leader.ErrNotFound, must.Sprint("a released lock names no active controller"))
	_, err = c.PutVolume(ctx, got, idx2, lead)
	must.ErrorIs(t, err, leader.ErrLeaseReleased)
	lead2, err := a2.AcquireLeadership(ctx, "127.0.0.1:7412")
	must.NoError(t, err)
	active, err = c.ReadLeader(ctx)
	must.NoError(t, err)
	must.Eq(t, "127.0.0.1:7412", active.ForwardAddr)
	must.Greater(t, lead.Epoch(), lead2.Epoch())

	must.ErrorIs(t, c.DeleteVolume(ctx, "vol1", idx, lead2), leader.ErrConflict)
	must.NoError(t, pl.Release(ctx)) // the primary demoted: the lock key stays, unheld
	must.NoError(t, c.DeleteVolume(ctx, "vol1", idx2, lead2))
	raw, err := consulapi.NewClient(&consulapi.Config{Address: dev.HTTPAddr})
	must.NoError(t, err)
	left, _, err := raw.KV().Keys(c.Keys().Volume("vol1"), "", nil)
	must.NoError(t, err)
	must.SliceEmpty(t, left, must.Sprint("keys left under the deleted volume"))
	_, _, err = c.GetVolume(ctx, "vol1")
	must.ErrorIs(t, err, leader.ErrNotFound)
	_, _, err = c.ReadInSync(ctx, "vol1")
	must.ErrorIs(t, err, leader.ErrNotFound)
	must.NoError(t, c.DeleteVolume(ctx, "vol1", 0, lead2), must.Sprint("deleting an absent volume succeeds"))
}
