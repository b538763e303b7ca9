package plugin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/saddlebag/saddlebag/leader"
)

// A CreateVolume interrupted by a controller crash leaves its record
// "creating" and whatever replicas it had made. Nomad does not repeat the
// create, so nothing would ever finish or remove it: the space would be
// lost silently. Meanwhile ListVolumes shows such a volume, its volume
// context saying saddlebag.io/state=creating and when it will be removed
// (saddlebag.io/removed-at), and once its
// record has not changed for CreateTimeout the active controller removes
// its replicas, then its record, logging each. A CreateVolume of the same
// name before then resumes it instead.

// cleanStaleCreates removes the volumes of vols whose create has been
// interrupted for longer than CreateTimeout. Volumes with an RPC in
// flight are left to the next pass.
func (c *Controller) cleanStaleCreates(ctx context.Context, lease *leader.Lease, vols []leader.VolumeRecord) error {
	now := c.cfg.Now()
	var errs []error
	for _, v := range vols {
		if v.State != leader.VolumeCreating || now.Sub(v.Updated) < c.cfg.CreateTimeout {
			continue
		}
		if err := c.cleanStaleCreate(ctx, lease, v.ID); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", v.ID, err))
		}
	}
	return errors.Join(errs...)
}

func (c *Controller) cleanStaleCreate(ctx context.Context, lease *leader.Lease, id string) error {
	unlock := c.locks.tryLock(id)
	if unlock == nil {
		return nil // a CreateVolume is resuming it right now
	}
	defer unlock()
	rec, index, err := c.cfg.Client.GetVolume(ctx, id)
	if errors.Is(err, leader.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	age := c.cfg.Now().Sub(rec.Updated)
	if rec.State != leader.VolumeCreating || age < c.cfg.CreateTimeout {
		return nil // changed since the snapshot
	}
	log := c.log.With("volume_id", id, "name", rec.Name, "age", age.Round(1e9), "create_timeout", c.cfg.CreateTimeout)
	log.Warn("removing a volume whose create was interrupted and never resumed", "replicas", rec.Replicas)
	if err := c.deleteReplicas(ctx, rec); err != nil {
		return fmt.Errorf("remove the replicas of an interrupted create (retried next pass): %w", err)
	}
	if err := c.cfg.Client.DeleteVolume(ctx, id, index, lease); err != nil {
		return fmt.Errorf("remove the record of an interrupted create: %w", err)
	}
	log.Info("interrupted create removed")
	return nil
}

// Volume context keys ListVolumes adds to a volume whose create has not
// completed (the CSI version here has no volume condition).
const (
	ContextState     = "saddlebag.io/state"      // "creating"
	ContextRemovedAt = "saddlebag.io/removed-at" // RFC 3339 time the active controller removes it
)

// markPending adds the pending-create keys to a listed volume.
func (c *Controller) markPending(v *csi.Volume, rec leader.VolumeRecord) {
	if v.VolumeContext == nil {
		v.VolumeContext = map[string]string{}
	}
	v.VolumeContext[ContextState] = string(rec.State)
	v.VolumeContext[ContextRemovedAt] = rec.Updated.Add(c.cfg.CreateTimeout).UTC().Format(time.RFC3339)
}
