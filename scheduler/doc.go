// Package scheduler decides where a volume's replicas live (docs/architecture.md,
// "Packages" and "Volumes").
//
// It owns two pure decisions:
//
//   - placement (Place): given a snapshot of the storage nodes and a request
//     for a new volume, choose the nodes that receive its replicas;
//   - re-replication planning (PlanReplacements): given the same snapshot, the
//     volumes and their holders, and the current time, say which replicas are
//     lost for good and which node receives a full copy in each one's place.
//
// Placement is a pipeline of small pure steps (docs/architecture.md,
// "Conventions", rule 14):
//
//	filter  (filter.go)  healthy, not draining, not excluded, inside the
//	                     topology requisite, enough free space; every
//	                     rejected node keeps the reason it was rejected
//	score   (score.go)   the static part of a node's worth: its rank among
//	                     the preferred topologies, and a balance of free
//	                     space against the replicas it already holds
//	choose  (choose.go)  greedily take the node that keeps the replicas
//	                     spread widest across the failure-domain label, then
//	                     the best score, ties broken by node ID
//
// The package does no I/O: no Consul, no gRPC, no disk, no clock. Time
// enters only as a value (PlanReplacements' now), so every decision can be
// replayed from its inputs. Same input, same output: results never depend on
// the order of the nodes, volumes or holders given. Inputs are never
// modified, and every function is safe to call from many goroutines at once.
//
// Callers read the snapshot from Consul (leader) and turn a *ShortfallError
// into the CSI status ResourceExhausted (plugin/internal/rpc); those
// translations live with them. scheduler must import no other Saddlebag package: not plugin, leader,
// replication or hcl.
package scheduler
