package reconcile

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/internal/telemetry"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/scheduler"
)

// Re-replication (docs/architecture.md, "CSI lifecycle"). Each pass:
//  1. snapshots the nodes (health from Consul) and notes when each
//     unhealthy node was first seen down;
//  2. asks scheduler.PlanReplacements which replicas have been on a node
//     down longer than the grace, and where their replacements go;
//  3. for each, creates the new replica on its node and records it in the
//     volume record (CAS under leadership) as leader.ReplicaAdding, the
//     lost one as leader.ReplicaLost. The primary, which follows its volume record, adds the new
//     replica to its engine, which copies everything to it;
//  4. once a volume's in-sync record names every "adding" replica, marks
//     them "ready" and drops the "lost" ones from the record; the primary
//     then retires them. Their data is removed from their nodes now if
//     they answer, else a tombstone makes a later pass remove it once the
//     node is back (tombstones.go).

// rereplicate plans the replacement of replicas lost for good
// (scheduler.PlanReplacements), records each, and completes those whose
// new replicas are in sync.
func (rc *Reconciler) rereplicate(ctx context.Context, lease *leader.Lease, nodes []leader.NodeState, vols []leader.VolumeRecord, now time.Time) error {
	var states []scheduler.VolumeState
	for _, v := range vols {
		if v.State != leader.VolumeReady {
			continue
		}
		p, _ := volspec.ParseParams(v.Spec.Parameters)
		st := scheduler.VolumeState{Volume: v.ID, SizeBytes: v.Spec.SizeBytes, Replicas: v.Spec.Replicas,
			Spread: p.Spread, Requisite: v.Requisite}
		for _, rr := range v.Replicas {
			if rr.State != leader.ReplicaLost {
				st.Holders = append(st.Holders, rr.Node)
			}
		}
		states = append(states, st)
	}
	var errs []error
	byName := NodeMap(nodes)
	for _, p := range scheduler.PlanReplacements(SchedulerNodes(nodes, vols, rc.downSince), states, now, rc.cfg.Grace) {
		if err := rc.replace(ctx, lease, p, byName); err != nil {
			errs = append(errs, err)
		}
	}
	for _, v := range vols {
		if v.State == leader.VolumeReady && slices.ContainsFunc(v.Replicas, func(rr leader.ReplicaRecord) bool { return rr.State != leader.ReplicaReady }) {
			if err := rc.Finish(ctx, lease, v.ID); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// replace records one planned replacement.
func (rc *Reconciler) replace(ctx context.Context, lease *leader.Lease, r scheduler.Replacement, nodes map[string]leader.NodeState) error {
	log := rc.log.With("volume_id", r.Volume, "lost", r.Lost, "new", r.New)
	if r.New == "" && !r.Surplus {
		log.Error("replica lost and no node can take a copy", "reason", r.Reason, "error", r.Err)
		telemetry.PlacementFailure("replace")
		return nil
	}
	unlock := rc.cfg.TryLock(r.Volume)
	if unlock == nil {
		return nil // an RPC is busy with the volume: next pass
	}
	defer unlock()
	rec, index, err := rc.cfg.Client.GetVolume(ctx, r.Volume)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(rec.Replicas, func(x leader.ReplicaRecord) bool { return x.Node == r.Lost })
	if rec.State != leader.VolumeReady || i < 0 || rec.Replicas[i].State == leader.ReplicaLost {
		return nil // changed since the snapshot
	}
	if r.New != "" {
		tombstoned, err := TombstonedNodes(ctx, rc.cfg.Client, r.Volume)
		if err != nil {
			return err
		}
		if slices.Contains(tombstoned, r.New) {
			log.Info("the chosen node still holds a deleted volume's replica of this id: next pass")
			return nil
		}
	}
	rec.Replicas[i].State = leader.ReplicaLost
	if r.New != "" {
		addr := nodes[r.New].ReplicaAddr
		if _, err := replication.CreateReplica(ctx, rc.cfg.Dial, addr, rec.ID, rec.Spec.SizeBytes, rc.cfg.ReplicaTimeout); err != nil {
			return err
		}
		rec.Replicas = append(rec.Replicas, leader.ReplicaRecord{Node: r.New, Addr: addr, State: leader.ReplicaAdding})
	}
	if _, err := rc.cfg.Client.PutVolume(ctx, rec, index, lease); err != nil {
		return err
	}
	log.Warn("replacing a replica whose node is down beyond the grace", "reason", r.Reason, "surplus", r.Surplus)
	return nil
}

// Finish completes a volume's replacements whose new replicas are in sync.
func (rc *Reconciler) Finish(ctx context.Context, lease *leader.Lease, id string) error {
	unlock := rc.cfg.TryLock(id)
	if unlock == nil {
		return nil
	}
	defer unlock()
	rec, index, err := rc.cfg.Client.GetVolume(ctx, id)
	if err != nil {
		return err
	}
	inSync, _, err := rc.cfg.Client.ReadInSync(ctx, id)
	never := errors.Is(err, leader.ErrNotFound) // never served: every replica is blank
	if err != nil && !never {
		return err
	}
	var lost []leader.ReplicaRecord
	keep := rec.Replicas[:0:0]
	for _, r := range rec.Replicas {
		switch r.State {
		case leader.ReplicaAdding:
			if !never && !inSync.Promotable(r.Addr) {
				return nil // still copying
			}
			r.State = leader.ReplicaReady
		case leader.ReplicaLost:
			lost = append(lost, r)
			continue
		}
		keep = append(keep, r)
	}
	rec.Replicas = keep
	if _, err := rc.cfg.Client.PutVolume(ctx, rec, index, lease); err != nil {
		return err
	}
	rc.log.Info("replacement replicas in sync: lost replicas dropped", "volume_id", id, "replicas", rec.Replicas, "dropped", lost)
	// The lost replicas' data: removed now where the node answers, else
	// a tombstone, which the next passes sweep once the node is back
	// (tombstones.go).
	var left []leader.ReplicaRecord
	for _, r := range lost {
		if err := replication.DeleteReplica(ctx, rc.cfg.Dial, r.Addr, id, time.Second); err != nil {
			rc.log.Info("lost replica's data left on its node until it is back (unreachable)", "volume_id", id, "node", r.Node, "error", err)
			left = append(left, r)
		}
	}
	return rc.cfg.Client.PutTombstones(ctx, id, left, lease)
}
