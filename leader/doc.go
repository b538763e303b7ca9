// Package leader is everything Saddlebag asks of Consul (DESIGN.md §3, §5.4):
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
//   - volume records <prefix>volumes/<vol> with check-and-set (volume.go);
//   - per-volume health checks in the Consul UI (health.go).
//
// The KV layout lives in keys.go and nowhere else.
//
// leader drives the data plane only through the small interfaces it owns
// (IOGate) and satisfies replication.InSyncHook structurally. It must not
// import replication, plugin, scheduler or hcl.
package leader
