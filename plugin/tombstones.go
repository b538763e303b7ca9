package plugin

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin/internal/rpc"
	"github.com/saddlebag/saddlebag/plugin/reconcile"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// A DeleteVolume that finds a replica's node down does not wait for it:
// a node that never returns would leave the volume "deleting", and the
// call failing, forever. It removes the replicas it can reach and deletes
// the record, and in the same Consul transaction leaves a tombstone
// (leader.Tombstone) for each replica on a node Consul reports down. The
// active controller's background pass (plugin/reconcile, tombstones.go)
// removes such a replica when its node is healthy again, then its
// tombstone. While a tombstone stands, no replica of a volume with the
// same id is placed on its node (CreateVolume, re-replication): the
// replica server would take the old replica's data for the new one.

// removeReplicas deletes rec's replicas on their nodes and returns those
// left on nodes Consul reports down (or no longer knows), for tombstones.
// A replica a primary still has open is FailedPrecondition; any other
// failure, on a node Consul reports healthy, is Unavailable (retried).
func (c *Controller) removeReplicas(ctx context.Context, rec leader.VolumeRecord) ([]leader.ReplicaRecord, error) {
	nodes, err := c.cfg.Client.ListNodes(ctx)
	if err != nil {
		return nil, rpc.ToStatus(err, "read nodes")
	}
	byName := reconcile.NodeMap(nodes)
	var left []leader.ReplicaRecord
	var busy, failed []error
	for _, r := range rec.Replicas {
		err := replication.DeleteReplica(ctx, c.cfg.Dial, r.Addr, rec.ID, c.cfg.ReplicaTimeout)
		switch {
		case err == nil:
		case errors.Is(err, wire.ErrReplicaBusy):
			busy = append(busy, fmt.Errorf("node %s: %w", r.Node, err))
		case !byName[r.Node].Healthy:
			left = append(left, r)
		default:
			failed = append(failed, fmt.Errorf("node %s: %w", r.Node, err))
		}
	}
	switch {
	case len(busy) > 0:
		return nil, rpc.Errf(codes.FailedPrecondition, "delete volume %s: %v", rec.ID, errors.Join(append(busy, failed...)...))
	case len(failed) > 0:
		return nil, rpc.Errf(codes.Unavailable, "delete volume %s: %v", rec.ID, errors.Join(failed...))
	}
	return left, nil
}
