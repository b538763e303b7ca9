// Package node is the CSI Node service (docs/architecture.md, "CSI
// lifecycle"), run by `saddlebag node` and served on plugin's gRPC
// server beside plugin's Identity service:
//
//   - stage.go: NodeStageVolume opens an encrypted volume's data key with
//     the passphrase secret (before anything else: a wrong one takes no
//     lease), takes the volume's primary lease and starts its engine
//     (internal/primary), wraps it in encrypt.Device (replication/encrypt)
//     when the volume is encrypted, serves it through FUSE
//     (replication/frontend/fuse) and a loop device and mounts it
//     (plugin/mount); while staged, it follows the volume
//     record (replicas the controller added or retired, a fence from
//     ControllerUnpublishVolume); NodePublishVolume bind-mounts it into
//     a task's target; the unstage and unpublish undo each;
//   - handoff.go: with a descriptor keeper (internal/fdkeeper), staged
//     volumes are parked there so that they outlive this process: a
//     graceful stop hands them over (HandOver), the next process takes
//     them back (Adopt);
//   - node.go: the service itself, NodeGetInfo (the node's topology,
//     scheduler.NodeSegments) and NodeGetVolumeStats;
//   - paths.go: the raw_exec path translation of docs/architecture.md,
//     "What we measured about Nomad" (PathMapper).
//
// Replica connections (the engines of staged volumes) go through the
// replication.Dialer in Config.Dial.
//
// Every field of every request is untrusted: volume ids are checked as
// the controller checks them (plugin/internal/rpc), and staging and
// target paths must be absolute, clean, not symlinks and outside the
// service's state directory (validate.go), all checked before anything
// touches Consul, a file or a replica (InvalidArgument naming the field
// and the rule). The node records each volume's staging path and targets
// in its state directory (pathrecord.go) and unstages or unpublishes
// only those. Its errors become gRPC status codes through
// plugin/internal/rpc's mapping, never one of its own; every RPC is
// serialised per volume (Aborted when another is in flight) and
// idempotent on its natural key.
//
// It may import leader, scheduler, replication (with replication/encrypt
// and replication/frontend/fuse), hcl/volspec, internal/primary,
// internal/volkey, internal/fdkeeper, plugin/mount and
// plugin/internal/rpc (and the leaf utility internal/ctxutil); it
// must not import plugin (the controller) or plugin/reconcile: the node
// never runs the controller's work. Only cmd/saddlebag imports it.
// internal/layering enforces all three.
package node
