package plugin

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
)

// A DeleteVolume that finds a replica's node down does not wait for it:
// a node that never returns would leave the volume "deleting", and the
// call failing, forever. It removes the replicas it can reach and deletes
// the record, and in the same Consul transaction leaves a tombstone
// (leader.Tombstone) for each replica on a node Consul reports down. The
// active controller's background pass (sweepTombstones) removes such a
// replica when its node is healthy again, then its tombstone. While a
// tombstone stands, no replica of a volume with the same id is placed on
// its node (CreateVolume, re-replication): the replica server would take
// the old replica's data for the new one.

// removeReplicas deletes rec's replicas on their nodes and returns those
// left on nodes Consul reports down (or no longer knows), for tombstones.
// A replica a primary still has open is FailedPrecondition; any other
// failure, on a node Consul reports healthy, is Unavailable (retried).
func (c *Controller) removeReplicas(ctx context.Context, rec leader.VolumeRecord) ([]leader.ReplicaRecord, error) {
	nodes, err := c.cfg.Client.ListNodes(ctx)
	if err != nil {
		return nil, toStatus(err, "read nodes")
	}
	byName := nodeMap(nodes)
	var left []leader.ReplicaRecord
	var busy, failed []error
	for _, r := range rec.Replicas {
		err := replication.DeleteReplica(ctx, c.cfg.Dial, r.Addr, rec.ID, c.cfg.ReplicaTimeout)
		switch {
		case err == nil:
		case errors.Is(err, replication.ErrReplicaBusy):
			busy = append(busy, fmt.Errorf("node %s: %w", r.Node, err))
		case !byName[r.Node].Healthy:
			left = append(left, r)
		default:
			failed = append(failed, fmt.Errorf("node %s: %w", r.Node, err))
		}
	}
	switch {
	case len(busy) > 0:
		return nil, errf(codes.FailedPrecondition, "delete volume %s: %v", rec.ID, errors.Join(append(busy, failed...)...))
	case len(failed) > 0:
		return nil, errf(codes.Unavailable, "delete volume %s: %v", rec.ID, errors.Join(failed...))
	}
	return left, nil
}

// tombstonedNodes returns the nodes holding a tombstoned replica of
// volume id: no new replica of id may go there.
func (c *Controller) tombstonedNodes(ctx context.Context, id string) ([]string, error) {
	ts, err := c.cfg.Client.ListTombstones(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range ts {
		if t.Volume == id {
			out = append(out, t.Node)
		}
	}
	return out, nil
}

// sweepTombstones removes the replicas of deleted volumes from the nodes
// that are healthy again, then their tombstones. A replica a current
// record of the same volume id lists on that node is never removed (no
// placement puts one there while the tombstone stands, so it would be a
// bug): the tombstone stays and the pass says so.
func (c *Controller) sweepTombstones(ctx context.Context, lease *leader.Lease, nodes map[string]leader.NodeState) error {
	ts, err := c.cfg.Client.ListTombstones(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range ts {
		n, ok := nodes[t.Node]
		if !ok || !n.Healthy {
			continue // still away
		}
		if err := c.sweepTombstone(ctx, lease, t, n.ReplicaAddr); err != nil {
			errs = append(errs, fmt.Errorf("tombstone of volume %s on node %s: %w", t.Volume, t.Node, err))
		}
	}
	return errors.Join(errs...)
}

func (c *Controller) sweepTombstone(ctx context.Context, lease *leader.Lease, t leader.Tombstone, addr string) error {
	unlock := c.locks.tryLock(t.Volume)
	if unlock == nil {
		return nil // an RPC is busy with the volume: next pass
	}
	defer unlock()
	log := c.log.With("volume_id", t.Volume, "node", t.Node, "deleted", t.Deleted)
	rec, _, err := c.cfg.Client.GetVolume(ctx, t.Volume)
	switch {
	case err == nil && slices.ContainsFunc(rec.Replicas, func(r leader.ReplicaRecord) bool { return r.Node == t.Node }):
		log.Error("a tombstoned replica's node holds a replica of a new volume with the same id: leaving both alone")
		return nil
	case err != nil && !errors.Is(err, leader.ErrNotFound):
		return err
	}
	if err := replication.DeleteReplica(ctx, c.cfg.Dial, addr, t.Volume, c.cfg.ReplicaTimeout); err != nil {
		return err // next pass
	}
	if err := c.cfg.Client.DeleteTombstone(ctx, t, lease); err != nil {
		return err
	}
	log.Info("removed the replica of a deleted volume from a node that came back")
	return nil
}
