package plugin

import (
	"context"
	"time"
)

// DeadClaim is a claim Nomad still counts against a volume although the
// allocation holding it is lost on a node Nomad has marked down.
type DeadClaim struct {
	Namespace string // the volume's Nomad namespace
	Volume    string // the Nomad (and CSI) volume ID
	NodeID    string // the Nomad node ID of the down node
	Alloc     string // the lost allocation
}

// ClaimReleaser is what the active controller needs of Nomad to free a
// dead node's volume claims as soon as Nomad allows it (issue 12).
// Without it a lost allocation's claim lasts until Nomad's periodic
// claim GC (csi_volume_claim_gc_interval, 5 minutes by default), and a
// replacement allocation's claim is refused ("volume max claims
// reached") and retried by the Nomad client at 2, 4, 8, 16, 32 s.
//
// Releasing a claim early costs no safety: Nomad answers it with
// ControllerUnpublishVolume, which fences the dead node at its epoch in
// the volume record, and the new primary's NodeStageVolume still waits
// for the primary lease (the dead node's session invalidated, then
// lock-delay); the epoch fences the old primary on every replica.
type ClaimReleaser interface {
	// Changes delivers a value whenever Nomad reports a node or an
	// allocation changed (its event stream), until ctx ends; it is
	// never closed. A nil channel (no event stream) leaves the
	// controller to its periodic pass.
	Changes(ctx context.Context) <-chan struct{}
	// DeadClaims lists the claims on this plugin's volumes held by a
	// lost allocation on a node that Nomad has marked down.
	DeadClaims(ctx context.Context) ([]DeadClaim, error)
	// Detach asks Nomad to release the claims of the claim's node on its
	// volume (the volume detach API, `nomad volume detach`).
	Detach(ctx context.Context, dc DeadClaim) error
}

// releaseClaims frees dead nodes' claims while this controller is
// active: on every change Nomad reports and every `every` otherwise.
func (c *Controller) releaseClaims(ctx context.Context, every time.Duration) {
	r := c.cfg.Claims
	changes := r.Changes(ctx)
	t := time.NewTicker(every)
	defer t.Stop()
	failed := map[DeadClaim]int{}
	for {
		claims, err := r.DeadClaims(ctx)
		if err != nil && ctx.Err() == nil {
			c.log.Debug("list dead claims", "error", err)
		}
		for _, dc := range claims {
			if ctx.Err() != nil {
				return
			}
			start := time.Now()
			if err := r.Detach(ctx, dc); err != nil {
				failed[dc]++
				if failed[dc] == 1 || failed[dc]%10 == 0 {
					c.log.Warn("release of a lost allocation's claim failed; retrying", "volume_id", dc.Volume,
						"nomad_node", dc.NodeID, "alloc", dc.Alloc, "attempts", failed[dc], "error", err)
				}
				continue
			}
			delete(failed, dc)
			c.log.Info("released the claim of a lost allocation on a down node", "volume_id", dc.Volume,
				"nomad_node", dc.NodeID, "alloc", dc.Alloc, "took", time.Since(start).Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-t.C:
		}
	}
}
