// Package clusterstatus is `saddlebag status`'s view of the cluster, read
// from Consul alone: every volume with its size, primary node and epoch,
// its replicas by node name with their state (in sync; resyncing, with
// progress, rate and ETA; missing; lost) and its health, and the storage
// nodes with theirs.
//
// What it reads: the volume records (spec, replicas by node), the primary
// locks (holder and epoch), the in-sync records, the progress records the
// primaries' nodes publish while something is behind
// (internal/primary.PublishProgress), the node records with Consul's
// health of each node, and the volumes' health checks.
//
// Of Saddlebag's packages it imports only leader.
package clusterstatus
