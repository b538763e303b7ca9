// Package reconcile is the active controller's background work
// (docs/architecture.md, "CSI lifecycle"): the passes that bring Consul's
// volume records and the nodes' replicas back to what they should be
// while no RPC asks for it.
//
// Each Pass of a Reconciler, run every ScanEvery by the active controller
// (plugin's Controller.Run):
//
//   - re-replication (rereplicate.go): replicas on a node down longer
//     than the grace are replaced on another node, as
//     scheduler.PlanReplacements plans, and dropped once their
//     replacement is in sync;
//   - interrupted creates (stale_create.go): a volume left "creating" for
//     longer than CreateTimeout has its replicas and record removed;
//   - tombstones (tombstones.go): a deleted volume's replica left on a
//     node that was down is removed once the node is back.
//
// It also holds the cluster view the Controller service's RPCs read the
// same way (snapshot.go): node and volume records turned into the
// scheduler's nodes.
//
// Every change to a record is a check-and-set under the leadership lease
// the pass is handed, and a volume is touched only while holding its
// per-volume lock (Config.TryLock, the Controller's own, shared with the
// RPCs); a busy volume is left to the next pass. Errors are returned
// joined, never as gRPC status codes: plugin and plugin/node are the
// only packages that speak those (plugin/internal/rpc maps them).
//
// It may import leader, scheduler, replication and hcl/volspec (and the
// leaf utilities internal/ctxutil, internal/units and internal/telemetry,
// which counts the replacements no node can take), and must not
// import plugin/mount, internal/primary, the CSI spec or gRPC's status
// codes; only plugin imports it. internal/layering enforces all three.
package reconcile
