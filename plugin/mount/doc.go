// Package mount is the node side of putting a volume in front of a task:
// it attaches a loop device to a volume file (the FUSE file the engine
// serves), finds the file system on it or makes one on first use, mounts
// it at a staging path, bind-mounts that into targets, and undoes each of
// those steps. It also recovers what a dead engine leaves behind (a FUSE
// mount that no longer answers, a loop device on it, file systems mounted
// from that loop device) so that the volume can be staged again here or on
// another node.
//
// Every step looks at the system first and only then acts, so each is
// idempotent and a retry after a crash halfway converges; Stage also
// checkpoints its progress in a state file so that an interrupted mkfs is
// redone rather than mistaken for a file system (docs/architecture.md,
// "Conventions", rule 12). A file system that exists is never reformatted,
// and none is made on a volume too small for it (volspec.FitsFS, the
// rule the spec checks and CreateVolume use).
//
// It shells out to the real tools where they are the interface (blkid,
// mkfs.ext4, mkfs.xfs, e2fsck) and uses golang.org/x/sys/unix for loop
// ioctls and mount(2). It must not speak gRPC status codes (the CSI
// services map its typed errors, in plugin/internal/rpc) and must not
// import leader or scheduler; it imports replication/frontend/fuse only
// to abort a FUSE connection, and hcl/volspec only for the size rule.
package mount
