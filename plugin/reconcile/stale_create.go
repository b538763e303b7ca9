package reconcile

import (
	"context"
	"errors"
	"fmt"

	"github.com/saddlebag/saddlebag/leader"
)

// A CreateVolume interrupted by a controller crash leaves its record
// "creating" and whatever replicas it had made. Nomad does not repeat the
// create, so nothing would ever finish or remove it: the space would be
// lost silently. Once its record has not changed for CreateTimeout the
// pass removes its replicas, then its record, logging each. A
// CreateVolume of the same name before then resumes it instead, and
// ListVolumes shows it meanwhile (plugin, stale_create.go).

// CleanStaleCreates removes the volumes of vols whose create has been
// interrupted for longer than CreateTimeout. Volumes with an RPC in
// flight are left to the next pass.
func (rc *Reconciler) CleanStaleCreates(ctx context.Context, lease *leader.Lease, vols []leader.VolumeRecord) error {
	now := rc.cfg.Now()
	var errs []error
	for _, v := range vols {
		if v.State != leader.VolumeCreating || now.Sub(v.Updated) < rc.cfg.CreateTimeout {
			continue
		}
		if err := rc.cleanStaleCreate(ctx, lease, v.ID); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", v.ID, err))
		}
	}
	return errors.Join(errs...)
}

func (rc *Reconciler) cleanStaleCreate(ctx context.Context, lease *leader.Lease, id string) error {
	unlock := rc.cfg.TryLock(id)
	if unlock == nil {
		return nil // a CreateVolume is resuming it right now
	}
	defer unlock()
	rec, index, err := rc.cfg.Client.GetVolume(ctx, id)
	if errors.Is(err, leader.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	age := rc.cfg.Now().Sub(rec.Updated)
	if rec.State != leader.VolumeCreating || age < rc.cfg.CreateTimeout {
		return nil // changed since the snapshot
	}
	log := rc.log.With("volume_id", id, "name", rec.Name, "age", age.Round(1e9), "create_timeout", rc.cfg.CreateTimeout)
	log.Warn("removing a volume whose create was interrupted and never resumed", "replicas", rec.Replicas)
	if err := DeleteReplicas(ctx, rc.cfg.Dial, rec, rc.cfg.ReplicaTimeout); err != nil {
		return fmt.Errorf("remove the replicas of an interrupted create (retried next pass): %w", err)
	}
	if err := rc.cfg.Client.DeleteVolume(ctx, id, index, lease); err != nil {
		return fmt.Errorf("remove the record of an interrupted create: %w", err)
	}
	log.Info("interrupted create removed")
	return nil
}
