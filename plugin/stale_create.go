package plugin

import (
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
// name before then resumes it instead. The removal is the background
// pass's (plugin/reconcile, stale_create.go).

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
