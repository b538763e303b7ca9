// Package rpc is what the Controller service (plugin) and the Node
// service (plugin/node) do alike to every CSI request:
//
//   - errors.go: the one mapping of the typed errors of leader,
//     scheduler, replication, hcl/volspec and plugin/mount to gRPC status
//     codes (ToStatus), by type, never by text; plugin's interceptors use
//     it too, so a call's logged and counted code is the code its caller
//     gets;
//   - validate.go: the id and name rules (CheckVolumeID, CheckNodeID,
//     CheckName: InvalidArgument naming the field and the rule);
//   - capability.go: the volume capabilities a single-primary volume
//     supports, and the passphrase check of an encrypted volume;
//   - locks.go: one RPC in flight per volume (VolumeLocks; Aborted for a
//     second).
//
// It may import leader, scheduler, replication, hcl/volspec,
// internal/volkey and plugin/mount (for their typed errors and rules),
// and nothing of plugin's services; only plugin and plugin/node import
// it (Go's internal rule, and internal/layering, which enforces both).
package rpc
