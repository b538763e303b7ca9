// Package plugin is Saddlebag's CSI plugin (CSI spec v1, docs/architecture.md,
// "CSI lifecycle"): the Identity and Controller services and the gRPC
// servers both processes serve their services on. The Node service is
// plugin/node's.
//
//   - identity.go: the Identity service (plugin name PluginName, the
//     CONTROLLER_SERVICE and VOLUME_ACCESSIBILITY_CONSTRAINTS capabilities,
//     Probe), served by both `saddlebag controller` and `saddlebag node`;
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
//   - serve.go: gRPC on a unix socket (and the controller's forward
//     channel on TCP, secured by the server options and transport
//     credentials cmd/saddlebag hands in: mutual TLS between
//     saddlebag-controller identities, internal/connecttls) with a
//     logging interceptor that strips secrets, and a metrics interceptor
//     counting every call by method and code (metrics.go,
//     internal/telemetry). Replica connections (create, delete) go
//     through the replication.Dialer in ControllerConfig.Dial.
//
// Every field of every request is untrusted: volume and node ids must be
// exactly the ids the plugin issues, checked before anything touches
// Consul or a replica (plugin/internal/rpc, InvalidArgument naming the
// field and the rule). The active controller removes creates interrupted
// for longer than CreateTimeout (plugin/reconcile), which ListVolumes
// shows meanwhile (stale_create.go). DeleteVolume does not wait for a
// node Consul reports down: it leaves a tombstone for that node's replica
// (tombstones.go), which the active controller removes when the node is
// back (plugin/reconcile).
//
// It and plugin/node are the only packages that speak gRPC status codes,
// and typed errors from leader, scheduler, replication, volspec and
// plugin/mount are mapped to codes in one place, plugin/internal/rpc
// (errors.go), never by their text; the interceptors here use the same
// mapping. Every RPC is serialised per volume (an RPC that finds another
// in flight for the same volume returns Aborted) and idempotent on its
// natural key.
//
// It may import leader, scheduler, replication, hcl/volspec,
// internal/volkey, plugin/reconcile and plugin/internal/rpc (and the
// leaf utilities internal/ctxutil, internal/units and
// internal/telemetry), and must not import plugin/node,
// internal/primary or internal/fdkeeper, which are the node's (nor
// plugin/mount directly: only its errors reach here, through
// plugin/internal/rpc). Only cmd/saddlebag imports it. internal/layering
// enforces all three.
package plugin
