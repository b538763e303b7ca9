// Package leader is everything Saddlebag asks of Consul (docs/architecture.md,
// "Consul layout" and "Promotion, epochs and fencing"):
//
//   - the node agent's registration (agent.go): the saddlebag-node service
//     with a TTL check the agent feeds, the node record under
//     <prefix>nodes/<node>, and ONE session tied to serfHealth and that check,
//     with a configured lock-delay; all recreated when Consul forgets them;
//   - leases (lease.go): the per-volume primary lock
//     <prefix>volumes/<vol>/primary, whose LockIndex is the volume's epoch,
//     and the controller's leadership lock <prefix>leader. A lease is
//     confirmed continuously; a holder that cannot confirm it within a bound
//     shorter than lock-delay holds its I/O (IOGate.Hold) until it either
//     confirms (Release) or learns it was replaced (Fence);
//   - the in-sync record <prefix>volumes/<vol>/insync (insync.go), written
//     with check-and-set in one transaction that also checks the writer
//     still holds the primary lock; it is the data plane's InSyncHook;
//   - volume records <prefix>volumes/<vol> with check-and-set (volume.go),
//     including an encrypted volume's key record (internal/volkey: the
//     data key sealed under its passphrases; nothing secret);
//   - tombstones <prefix>tombstones/<vol>/<node> (tombstone.go): a deleted
//     volume's replica left on a node that was down, written in the
//     transaction that deletes the volume record;
//   - per-volume health checks in the Consul UI (health.go), their notes
//     naming replicas by node;
//   - the resync progress record <prefix>volumes/<vol>/resync
//     (progress.go), written by the primary's node for operators.
//
// The KV layout lives in keys.go and nowhere else. A name spelled into a
// key (volume id, node name) is exactly one segment: ValidateName refuses
// anything that could change a key's structure ('/', ".", "..", "%",
// control characters, over 128 characters), the Client refuses such a name
// with ErrInvalid, and Keys quarantines one that slips through.
//
// A process restarted under the same name takes over its predecessor's
// session at start (takeover.go): it releases the locks that session holds
// and destroys it, since the new process feeds the check the old session
// is tied to and it would otherwise never die; the next acquisition of
// each lock raises its LockIndex, fencing the dead process's epoch. The
// session name carries pid and boot id, so a predecessor still running on
// this host is waited for (at most lock-delay) first.
//
// leader drives the data plane only through the small interfaces it owns
// (IOGate) and satisfies replication.InSyncHook structurally. It must not
// import replication, plugin, scheduler or hcl.
package leader
