package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
)

// A DeleteVolume that finds a replica's node down leaves a tombstone
// (leader.Tombstone) for that replica (plugin, tombstones.go), and so
// does re-replication for a replaced replica whose node does not answer
// (rereplicate.go). The pass removes such a replica when its node is
// healthy again, then its tombstone. While a tombstone stands, no replica
// of a volume with the same id is placed on its node (TombstonedNodes).

// SweepTombstones removes the replicas of deleted volumes from the nodes
// that are healthy again, then their tombstones. A replica a current
// record of the same volume id lists on that node is never removed (no
// placement puts one there while the tombstone stands, so it would be a
// bug): the tombstone stays and the pass says so.
func (rc *Reconciler) SweepTombstones(ctx context.Context, lease *leader.Lease, nodes map[string]leader.NodeState) error {
	ts, err := rc.cfg.Client.ListTombstones(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range ts {
		n, ok := nodes[t.Node]
		if !ok || !n.Healthy {
			continue // still away
		}
		if err := rc.SweepTombstone(ctx, lease, t, n.ReplicaAddr); err != nil {
			errs = append(errs, fmt.Errorf("tombstone of volume %s on node %s: %w", t.Volume, t.Node, err))
		}
	}
	return errors.Join(errs...)
}

// SweepTombstone removes t's replica from the replica server at addr,
// then t, unless a volume record of the same id names t's node.
func (rc *Reconciler) SweepTombstone(ctx context.Context, lease *leader.Lease, t leader.Tombstone, addr string) error {
	unlock := rc.cfg.TryLock(t.Volume)
	if unlock == nil {
		return nil // an RPC is busy with the volume: next pass
	}
	defer unlock()
	log := rc.log.With("volume_id", t.Volume, "node", t.Node, "deleted", t.Deleted)
	rec, _, err := rc.cfg.Client.GetVolume(ctx, t.Volume)
	switch {
	case err == nil && slices.ContainsFunc(rec.Replicas, func(r leader.ReplicaRecord) bool { return r.Node == t.Node }):
		log.Error("a tombstoned replica's node holds a replica of a new volume with the same id: leaving both alone")
		return nil
	case err != nil && !errors.Is(err, leader.ErrNotFound):
		return err
	}
	if err := replication.DeleteReplica(ctx, rc.cfg.Dial, addr, t.Volume, rc.cfg.ReplicaTimeout); err != nil {
		return err // next pass
	}
	if err := rc.cfg.Client.DeleteTombstone(ctx, t, lease); err != nil {
		return err
	}
	log.Info("removed the replica of a deleted volume from a node that came back")
	return nil
}
