package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/saddlebag/saddlebag/internal/fdkeeper"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin/internal/rpc"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/scheduler"
)

// Config configures the Node service of a `saddlebag node` agent.
type Config struct {
	Agent  *leader.Agent
	Client *leader.Client
	// NodeID is the node's name (as in Consul and the volume records).
	NodeID string
	// Labels are the node's failure-domain labels: its topology segments.
	Labels map[string]string
	// MaxVolumes is reported as max_volumes_per_node (0: no limit).
	MaxVolumes int64
	// StateDir holds the FUSE mount points and stage checkpoints of the
	// volumes staged here (not inside the replica data directory).
	StateDir string
	// Paths translates the staging and target paths Nomad passes.
	Paths PathMapper
	// StageTimeout bounds NodeStageVolume's wait for the primary lease
	// (another node may hold it, or lock-delay may run). Default 60s.
	StageTimeout time.Duration
	// ReplicaTimeout is the engine's per-request replica timeout.
	ReplicaTimeout time.Duration
	// ResyncRate limits each staged volume's resync traffic per replica,
	// bytes per second (0: unlimited).
	ResyncRate int64
	// Dial connects the engine to replica servers (mutual TLS; nil: plain
	// TCP, for --insecure and tests).
	Dial replication.Dialer
	// FUSEHungTimeout is the FUSE watchdog's bound (0: default).
	FUSEHungTimeout time.Duration
	// Keeper, when set, is the descriptor keeper staged volumes are
	// parked in so that they outlive this process (handoff.go).
	Keeper *fdkeeper.Client
	// HandOverTimeout bounds HandOver's wait for FUSE requests already
	// read (0: DefaultHandOverTimeout).
	HandOverTimeout time.Duration
	Log             hclog.Logger
}

// Node is the CSI Node service. RPCs are serialised per volume; the
// volumes staged here are kept in memory with the primary each one runs.
// After a restart nothing is staged: NodeStageVolume clears what the
// previous process left (plugin/mount.Recover) and promotes again.
type Node struct {
	csi.UnimplementedNodeServer
	cfg   Config
	log   hclog.Logger
	locks rpc.VolumeLocks

	mu     sync.Mutex
	staged map[string]*stagedVolume
}

var _ csi.NodeServer = (*Node)(nil)

// New validates cfg and returns the service.
func New(cfg Config) (*Node, error) {
	if cfg.Agent == nil || cfg.Client == nil || cfg.NodeID == "" || cfg.StateDir == "" {
		return nil, fmt.Errorf("%w: node service needs an agent, a client, a node id and a state dir", leader.ErrInvalid)
	}
	if cfg.StageTimeout == 0 {
		cfg.StageTimeout = 60 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("csi state dir: %w", err)
	}
	return &Node{cfg: cfg, log: cfg.Log.Named("csi-node"), staged: map[string]*stagedVolume{}}, nil
}

func (n *Node) lock(id string) (func(), error) { return n.locks.Lock(id) }

func (n *Node) get(id string) *stagedVolume {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.staged[id]
}

// NodeGetCapabilities: staging and volume stats.
func (n *Node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeGetInfo returns the node id, its topology (labels plus the node
// key, see TopologyNodeKey) and the volume limit.
func (n *Node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId: n.cfg.NodeID, MaxVolumesPerNode: n.cfg.MaxVolumes,
		AccessibleTopology: &csi.Topology{Segments: scheduler.NodeSegments(n.cfg.NodeID, n.cfg.Labels)},
	}, nil
}

// NodeGetVolumeStats reports the usage of a volume staged here, at a
// staging or target path: bytes and inodes of its file system, or the
// size of a raw block volume. A malformed id or path (".." or "."
// elements, control characters) is InvalidArgument; a well-formed id of
// a volume not staged here is NotFound (CSI's error table); for a volume
// staged here, a path that is not absolute (CSI: "MUST be an absolute
// path") or is none of the paths it was staged or published at is
// InvalidArgument, and nothing there is looked at: only a path recorded
// at stage or publish time is stat'ed. csi-sanity v5.6.0 expects
// NotFound for a staged volume asked at the relative "some/path"; that
// one spec contradicts the CSI spec and is excluded in TestCSISanity.
func (n *Node) NodeGetVolumeStats(_ context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, p := req.GetVolumeId(), req.GetVolumePath()
	if err := rpc.CheckVolumeID("volume_id", id); err != nil {
		return nil, err
	}
	if p == "" {
		return nil, rpc.Errf(codes.InvalidArgument, "volume_path is required")
	}
	why := pathProblem(p)
	if !filepath.IsAbs(p) {
		why = pathProblem("/" + p) // the elements are checked first; relativity after the id
	}
	if why != "" {
		return nil, rpc.Errf(codes.InvalidArgument, "volume_path %.200q %s", p, why)
	}
	sv := n.get(id)
	if sv == nil {
		return nil, rpc.Errf(codes.NotFound, "volume %s is not staged on this node", id)
	}
	if !filepath.IsAbs(p) {
		return nil, rpc.Errf(codes.InvalidArgument, "volume_path %.200q is not absolute", p)
	}
	path := n.cfg.Paths.Host(p)
	if !sv.hasPath(path) {
		return nil, rpc.Errf(codes.InvalidArgument, "volume %s is not staged or published at volume_path %q on this node", id, p)
	}
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, rpc.Errf(codes.NotFound, "volume path %s does not exist", path)
	}
	if err != nil {
		return nil, rpc.Errf(codes.Internal, "stat %s: %v", path, err)
	}
	if st.Mode()&os.ModeDevice != 0 || sv.block {
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: sv.size}}}, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return nil, rpc.Errf(codes.Internal, "statfs %s: %v", path, err)
	}
	bs := fs.Bsize
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(fs.Blocks) * bs, Available: int64(fs.Bavail) * bs,
			Used: int64(fs.Blocks-fs.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(fs.Files), Available: int64(fs.Ffree), Used: int64(fs.Files - fs.Ffree)},
	}}, nil
}

// StagedVolumes returns how many volumes are staged on this node.
func (n *Node) StagedVolumes() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.staged)
}

// Shutdown unstages every volume staged here (file systems still in use
// are detached lazily) and demotes their primaries, so the leases are
// released for the next node rather than left to lock-delay.
func (n *Node) Shutdown(ctx context.Context) {
	n.mu.Lock()
	vols := make([]*stagedVolume, 0, len(n.staged))
	for _, sv := range n.staged {
		vols = append(vols, sv)
	}
	n.mu.Unlock()
	for _, sv := range vols {
		if err := n.unstage(ctx, sv, true); err != nil {
			n.log.Error("unstage at shutdown", "volume_id", sv.id, "error", err)
		}
	}
}
