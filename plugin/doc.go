// Package plugin is Saddlebag's CSI plugin (CSI spec v1, docs/architecture.md,
// "CSI lifecycle"):
//
//   - identity.go: the Identity service (plugin name PluginName, the
//     CONTROLLER_SERVICE and VOLUME_ACCESSIBILITY_CONSTRAINTS capabilities,
//     Probe);
//   - controller*.go: the Controller service, run by `saddlebag
//     controller`: volumes are records in Consul (leader) placed by the
//     scheduler; CreateVolume writes the record "creating", makes the
//     replicas on their nodes over the replica protocol and writes
//     "ready" last; only the instance holding the leadership lock mutates
//     anything, a standby answers reads and forwards the rest to the
//     active instance at the address published in the leadership lock
//     (leadership.go, forward.go: Nomad never retries another instance on
//     Unavailable); the active instance's background passes (re-replication
//     of replicas whose node has been down longer than a grace period,
//     interrupted creates, tombstones) are plugin/reconcile's, and
//     placement is the scheduler's; ControllerUnpublishVolume fences
//     the volume's primary node in the record and waits for a healthy
//     node to let the lease go, but not for one Consul reports failed
//     (the next NodeStageVolume waits for the lease; issue 12);
//   - node*.go: the Node service, run by `saddlebag node`: NodeStage opens
//     an encrypted volume's data key with the passphrase secret (before
//     anything else: a wrong one takes no lease), takes the volume's
//     primary lease and starts its engine (internal/primary), wraps it in
//     replication.EncryptedDevice when the volume is encrypted,
//     serves it through FUSE and a loop device and mounts it
//     (plugin/mount); while staged, it follows the volume record (replicas
//     the controller added or retired, a fence from
//     ControllerUnpublishVolume);
//   - serve.go: gRPC on a unix socket (and the controller's forward
//     channel on TCP, secured by the server options and transport
//     credentials cmd/saddlebag hands in: mutual TLS between
//     saddlebag-controller identities, internal/connecttls) with a
//     logging interceptor that strips secrets, and a metrics interceptor
//     counting every call by method and code (metrics.go,
//     internal/telemetry); paths.go: the raw_exec
//     path translation of docs/architecture.md, "What we measured about Nomad". Replica connections (create,
//     delete, the engines of staged volumes) go through the
//     replication.Dialer in ControllerConfig.Dial and NodeConfig.Dial.
//
// Every field of every request is untrusted (validate.go): volume and
// node ids must be exactly the ids the plugin issues
// (replication.ValidateVolumeID, leader.ValidateNodeName), staging and
// target paths absolute, clean, not symlinks and outside the plugin's
// state directory, all checked before anything touches Consul, a file or
// a replica (InvalidArgument naming the field and the rule). The node
// records each volume's staging path and targets in its state directory
// (node_paths.go) and unstages or unpublishes only those. The active
// controller removes creates interrupted for longer than CreateTimeout
// (plugin/reconcile), which ListVolumes shows meanwhile (stale_create.go).
// DeleteVolume does not wait for a node Consul reports down: it leaves a
// tombstone for that node's replica (tombstones.go), which the active
// controller removes when the node is back (plugin/reconcile).
//
// It is the only package that speaks gRPC status codes: typed errors from
// leader, scheduler, replication, volspec and plugin/mount are mapped to
// codes here (errors.go), never by their text. Every RPC is serialised
// per volume (an RPC that finds another in flight for the same volume
// returns Aborted) and idempotent on its natural key.
//
// It may import leader, scheduler, replication, hcl/volspec,
// internal/primary, internal/volkey, internal/fdkeeper (where staged
// volumes are parked across a restart), plugin/mount and
// plugin/reconcile (and the leaf utilities internal/ctxutil,
// internal/units and internal/telemetry); only cmd/saddlebag
// imports it. internal/layering enforces both.
package plugin
