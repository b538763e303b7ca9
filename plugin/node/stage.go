package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/internal/ctxutil"
	"github.com/saddlebag/saddlebag/internal/primary"
	"github.com/saddlebag/saddlebag/internal/volkey"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin/internal/rpc"
	"github.com/saddlebag/saddlebag/plugin/mount"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/encrypt"
	"github.com/saddlebag/saddlebag/replication/frontend/fuse"
)

// stagedVolume is a volume staged on this node: its primary, the FUSE
// file serving the engine, and what is mounted on top.
type stagedVolume struct {
	id, stagingPath string
	block           bool
	size            int64
	device          string // the loop device
	prim            *primary.Primary
	fuse            *fuse.Mount
	stateFile       string
	// keyRec is the key record of an encrypted volume (nil if plain): a
	// repeated NodeStageVolume must bring the passphrase too.
	keyRec *volkey.Record
	// parkMeta and parkDev are what the descriptor keeper holds for the
	// volume (handoff.go); parkDev nil: not parked.
	parkMeta []byte
	parkDev  *os.File

	stopWatch context.CancelFunc
	watchDone chan struct{}

	mu      sync.Mutex
	targets map[string]bool
}

func (sv *stagedVolume) hasPath(p string) bool {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return p == sv.stagingPath || sv.targets[p]
}

func (n *Node) fuseDir(id string) string { return filepath.Join(n.cfg.StateDir, "fuse", id) }

// NodeStageVolume makes this node the volume's primary and puts the volume
// at the staging path: take the primary lease (waiting up to StageTimeout
// for another holder to let go), start the engine at the lease's epoch
// over the replicas in the volume record, serve it as a FUSE file with a
// loop device on it and, for mount access, make the file system on first
// use and mount it.
func (n *Node) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := rpc.CheckVolumeID("volume_id", id); err != nil {
		return nil, err
	}
	staging, err := n.hostPath("staging_target_path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	vc := req.GetVolumeCapability()
	why, err := rpc.CheckCapability(vc)
	if err != nil {
		return nil, rpc.Errf(codes.InvalidArgument, "%v", err)
	}
	if why != "" {
		return nil, rpc.Errf(codes.InvalidArgument, "%s", why)
	}
	unlock, err := n.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	log := n.log.With("volume_id", id)
	if sv := n.get(id); sv != nil {
		if sv.stagingPath != staging || sv.block != (vc.GetBlock() != nil) {
			return nil, rpc.Errf(codes.AlreadyExists, "volume %s is already staged here at %s", id, sv.stagingPath)
		}
		if sv.prim.Lease.Err() == nil {
			if err := rpc.CheckPassphrase(leader.VolumeRecord{ID: id, Encryption: sv.keyRec}, req.GetSecrets()); err != nil {
				return nil, err
			}
			return &csi.NodeStageVolumeResponse{}, nil
		}
		// The lease was lost (fenced): undo and stage again at a new epoch.
		if err := n.unstage(ctx, sv, true); err != nil {
			return nil, rpc.ToStatus(err, "clear a fenced stage")
		}
	}
	log.Info("staging volume: opening its key, then taking the primary lease", "staging", staging)
	rec, _, err := n.cfg.Client.GetVolume(ctx, id)
	if err != nil {
		return nil, rpc.ToStatus(err, "read volume")
	}
	if rec.State != leader.VolumeReady {
		return nil, rpc.Errf(codes.NotFound, "volume %s is %s", id, rec.State)
	}
	if why := rpc.CapabilityFits(vc, rec); why != "" {
		return nil, rpc.Errf(codes.FailedPrecondition, "%s", why)
	}
	fsType := rec.Spec.FSType
	if fsType == "" {
		fsType = volspec.DefaultFSType
	}
	// An encrypted volume's key is opened before anything else: a wrong
	// or missing passphrase takes no lease (a running primary elsewhere
	// is not fenced) and reads no block.
	key, err := stageKey(rec, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer clear(key)
	if key != nil {
		log.Info("volume key opened (argon2id): taking the primary lease")
	}
	sv := &stagedVolume{id: id, stagingPath: staging, block: vc.GetBlock() != nil, size: rec.Spec.SizeBytes,
		stateFile: filepath.Join(n.cfg.StateDir, "stage", id+".json"), targets: map[string]bool{}, keyRec: rec.Encryption}
	fuseDir := n.fuseDir(id)
	backing := filepath.Join(fuseDir, id)
	if rc, err := mount.Recover(ctx, mount.RecoverRequest{FUSEDir: fuseDir, BackingFile: backing, Force: true, Log: log}); err != nil {
		return nil, rpc.ToStatus(err, "clear what an earlier engine left")
	} else if rc.Server != mount.ServerAbsent {
		log.Warn("cleaned up after an earlier engine", "server", rc.Server, "unmounted", rc.Unmounted, "detached", rc.Detached)
	}

	p, _ := volspec.ParseParams(rec.Spec.Parameters)
	pcfg := primary.Config{Agent: n.cfg.Agent, Client: n.cfg.Client, Volume: id, Size: rec.Spec.SizeBytes,
		Replicas: n.replicaConfigs(rec), Want: rec.Spec.Replicas, MinInSync: p.MinInSync,
		Timeout: n.cfg.ReplicaTimeout, ResyncRate: n.cfg.ResyncRate, Dial: n.cfg.Dial, Log: n.cfg.Log}
	pctx, cancel := context.WithTimeout(ctx, n.cfg.StageTimeout)
	prim, err := primary.Promote(pctx, pcfg)
	timedOut := errors.Is(pctx.Err(), context.DeadlineExceeded)
	cancel()
	if err != nil {
		if timedOut && ctx.Err() == nil {
			holder, _ := n.cfg.Client.ReadPrimary(ctx, id)
			return nil, rpc.Errf(codes.Unavailable, "volume %s: primary lease not free within %s (held by node %q): retry", id, n.cfg.StageTimeout, holder.Node)
		}
		return nil, rpc.ToStatus(err, "promote")
	}
	sv.prim = prim
	ok := false
	defer func() {
		if !ok {
			if err := n.teardown(context.WithoutCancel(ctx), sv, true); err != nil {
				log.Error("undo a failed stage", "error", err)
			} else if err := n.removePaths(id); err != nil {
				log.Error("undo a failed stage", "error", err)
			}
		}
	}()
	// Recorded before anything is mounted there, so that the unstage of
	// a later process still knows this is the volume's staging path.
	if err := n.writePaths(id, pathRecord{Staging: staging}); err != nil {
		return nil, rpc.ToStatus(err, "record the staging path")
	}
	var dev replication.Device = prim.Engine
	if key != nil {
		// Every block is encrypted before the engine replicates it.
		if dev, err = encrypt.NewDevice(prim.Engine, key); err != nil {
			return nil, rpc.ToStatus(err, "encrypt the volume")
		}
	}
	sv.fuse, err = n.mountFUSE(ctx, dev, id)
	if err != nil {
		return nil, rpc.ToStatus(err, "serve the volume file")
	}
	if sv.block {
		if sv.device, err = mount.AttachLoop(sv.fuse.Path()); err != nil {
			return nil, rpc.ToStatus(err, "attach loop device")
		}
		if err := os.MkdirAll(staging, 0o750); err != nil {
			return nil, rpc.ToStatus(err, "staging path")
		}
	} else {
		st, err := mount.Stage(ctx, mount.StageRequest{BackingFile: sv.fuse.Path(), StagingPath: staging, FSType: fsType, Written: prim.Engine.Written(),
			MountOptions: vc.GetMount().GetMountFlags(), StateFile: sv.stateFile, Log: log})
		if err != nil {
			return nil, rpc.ToStatus(err, "stage")
		}
		sv.device = st.Device
		log.Info("volume staged", "staging", staging, "device", st.Device, "fs_type", st.FSType, "formatted", st.Formatted,
			"epoch", prim.Lease.Epoch())
	}
	ok = true
	wctx, stop := context.WithCancel(context.Background())
	sv.stopWatch, sv.watchDone = stop, make(chan struct{})
	go func() {
		defer close(sv.watchDone)
		n.follow(wctx, sv)
	}()
	n.mu.Lock()
	n.staged[id] = sv
	n.mu.Unlock()
	n.park(sv, key)
	return &csi.NodeStageVolumeResponse{}, nil
}

// stageKey returns an encrypted volume's data key, opened with the
// passphrase among the request's secrets (nil for a plain volume). A
// missing or wrong passphrase is InvalidArgument, not FailedPrecondition:
// Nomad rewrites a FailedPrecondition from NodeStageVolume into a message
// about MULTI_NODE capabilities, and passes InvalidArgument's message to
// the operator unchanged. Neither message quotes the secret.
func stageKey(rec leader.VolumeRecord, secrets map[string]string) ([]byte, error) {
	if rec.Encryption == nil {
		if p, _ := volspec.ParseParams(rec.Spec.Parameters); p.Encrypted {
			return nil, rpc.Errf(codes.Internal, "volume %s is marked encrypted but its record in Consul holds no key record", rec.ID)
		}
		return nil, nil
	}
	pass, ok := secrets[volspec.SecretPassphrase]
	if !ok {
		return nil, rpc.Errf(codes.InvalidArgument, "volume %s is encrypted: NodeStageVolume needs the secret %s (set it in the volume's secrets block; Nomad passes it at every stage)",
			rec.ID, volspec.SecretPassphrase)
	}
	key, err := rec.Encryption.Open(rec.ID, pass)
	switch {
	case errors.Is(err, volkey.ErrWrongPassphrase):
		return nil, rpc.Errf(codes.InvalidArgument, "volume %s: secrets.%s is wrong: it does not open the volume's data key; nothing was staged",
			rec.ID, volspec.SecretPassphrase)
	case err != nil:
		return nil, rpc.Errf(codes.Internal, "volume %s: its key record in Consul is unusable: %v", rec.ID, err)
	}
	return key, nil
}

// replicaConfigs lists a record's replicas for the engine.
func (n *Node) replicaConfigs(rec leader.VolumeRecord) []replication.ReplicaConfig {
	out := make([]replication.ReplicaConfig, 0, len(rec.Replicas))
	for _, r := range rec.Replicas {
		out = append(out, replication.ReplicaConfig{Addr: r.Addr, Local: r.Node == n.cfg.NodeID})
	}
	return out
}

// NodeUnstageVolume unmounts the volume, detaches the loop device, stops
// FUSE, shuts the engine down cleanly and releases the primary lease.
// A volume not staged here is unstaged already (anything an earlier
// process left at the paths is cleared). Only the staging path recorded
// for the volume is acted on: another one is InvalidArgument.
func (n *Node) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := rpc.CheckVolumeID("volume_id", id); err != nil {
		return nil, err
	}
	staging, err := n.hostPath("staging_target_path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	unlock, err := n.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, recorded, err := n.readPaths(id)
	if err != nil {
		return nil, rpc.ToStatus(err, "unstage")
	}
	sv := n.get(id)
	if sv != nil {
		rec.Staging, recorded = sv.stagingPath, true
	}
	if recorded && rec.Staging != staging {
		return nil, rpc.Errf(codes.InvalidArgument, "volume %s is staged at another staging_target_path on this node; unstage acts only on the path it was staged at", id)
	}
	if sv != nil {
		if err := n.unstage(ctx, sv, false); err != nil {
			return nil, rpc.ToStatus(err, "unstage")
		}
		return &csi.NodeUnstageVolumeResponse{}, rpc.ToStatus(n.removePaths(id), "unstage")
	}
	// Not staged by this process: clear what an earlier one left, all of
	// it inside the plugin's own directory or mounted from it.
	fuseDir := n.fuseDir(id)
	if _, err := mount.Recover(ctx, mount.RecoverRequest{FUSEDir: fuseDir, BackingFile: filepath.Join(fuseDir, id), Force: true,
		Log: n.log}); err != nil {
		return nil, rpc.ToStatus(err, "clear what an earlier engine left")
	}
	return &csi.NodeUnstageVolumeResponse{}, rpc.ToStatus(n.removePaths(id), "unstage")
}

// unstage undoes NodeStageVolume for sv and forgets it.
func (n *Node) unstage(ctx context.Context, sv *stagedVolume, lazy bool) error {
	sv.stopWatch()
	<-sv.watchDone
	if err := n.teardown(ctx, sv, lazy); err != nil {
		return err
	}
	n.unpark(sv)
	n.mu.Lock()
	delete(n.staged, sv.id)
	n.mu.Unlock()
	n.log.Info("volume unstaged", "volume_id", sv.id, "staging", sv.stagingPath)
	return nil
}

// teardown unwinds a stage in order: file system, loop device, FUSE, then
// the primary (engine flushed, lease released, health check dropped).
func (n *Node) teardown(ctx context.Context, sv *stagedVolume, lazy bool) error {
	if sv.fuse != nil {
		if sv.block {
			sv.mu.Lock()
			targets := len(sv.targets)
			sv.mu.Unlock()
			if targets > 0 && !lazy {
				return fmt.Errorf("%w: volume %s is still published at %d targets", mount.ErrPathBusy, sv.id, targets)
			}
			if err := mount.DetachLoops(sv.fuse.Path()); err != nil {
				return err
			}
		} else if err := mount.Unstage(ctx, mount.UnstageRequest{BackingFile: sv.fuse.Path(), StagingPath: sv.stagingPath,
			StateFile: sv.stateFile, Lazy: lazy, Log: n.log}); err != nil {
			return err
		}
		if err := unmountFUSE(sv.fuse); err != nil {
			return err
		}
	}
	if sv.prim != nil {
		if err := sv.prim.Demote(context.WithoutCancel(ctx)); err != nil {
			n.log.Warn("demote", "volume_id", sv.id, "error", err)
		}
	}
	return nil
}

// unmountFUSE unmounts the volume file, waiting briefly for the loop
// device to let go of it, and aborts it as a last resort.
func unmountFUSE(m *fuse.Mount) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := m.Unmount()
		if err == nil || !errors.Is(err, fuse.ErrBusy) {
			return err
		}
		if time.Now().After(deadline) {
			return m.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// NodePublishVolume bind-mounts the staged file system (or, for block
// access, the loop device) at the target path, read-only when asked.
func (n *Node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := rpc.CheckVolumeID("volume_id", id); err != nil {
		return nil, err
	}
	target, err := n.hostPath("target_path", req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	if req.GetStagingTargetPath() == "" {
		return nil, rpc.Errf(codes.InvalidArgument, "staging_target_path is required (the plugin stages volumes)")
	}
	staging, err := n.hostPath("staging_target_path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	if within(target, staging) || within(staging, target) {
		return nil, rpc.Errf(codes.InvalidArgument, "target_path and staging_target_path overlap")
	}
	vc := req.GetVolumeCapability()
	why, err := rpc.CheckCapability(vc)
	if err != nil {
		return nil, rpc.Errf(codes.InvalidArgument, "%v", err)
	}
	if why != "" {
		return nil, rpc.Errf(codes.InvalidArgument, "%s", why)
	}
	unlock, err := n.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	sv := n.get(id)
	if sv == nil {
		return nil, rpc.Errf(codes.FailedPrecondition, "volume %s is not staged on this node", id)
	}
	if sv.stagingPath != staging {
		return nil, rpc.Errf(codes.FailedPrecondition, "volume %s is staged at %s, not %s", id, sv.stagingPath, staging)
	}
	if sv.block != (vc.GetBlock() != nil) {
		return nil, rpc.Errf(codes.AlreadyExists, "volume %s was staged with another access type", id)
	}
	readOnly := req.GetReadonly() || vc.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	if err := n.addTarget(id, target); err != nil { // before the mount: unpublish must know it
		return nil, rpc.ToStatus(err, "record the target path")
	}
	if sv.block {
		err = publishBlock(sv.device, target, readOnly)
	} else {
		err = mount.Publish(staging, target, readOnly)
	}
	if err != nil {
		return nil, rpc.ToStatus(err, "publish")
	}
	sv.mu.Lock()
	sv.targets[target] = true
	sv.mu.Unlock()
	n.log.Info("volume published", "volume_id", id, "target", target, "read_only", readOnly)
	return &csi.NodePublishVolumeResponse{}, nil
}

// publishBlock bind-mounts the device node onto a file at target.
func publishBlock(device, target string, readOnly bool) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return err
	}
	if st, err := os.Stat(target); err == nil && st.Mode()&os.ModeDevice != 0 {
		return nil // already bound (stat follows the bind to the device)
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create block target %s: %w", target, err)
	}
	f.Close()
	if err := unix.Mount(device, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s to %s: %w", device, target, err)
	}
	if readOnly {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("remount %s read-only: %w", target, err)
		}
	}
	return nil
}

// NodeUnpublishVolume unmounts the target and removes it, if it is one
// the volume was published at (pathrecord.go); a path that does not exist
// is unpublished already, and any other path is InvalidArgument, with
// nothing touched.
func (n *Node) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := rpc.CheckVolumeID("volume_id", id); err != nil {
		return nil, err
	}
	target, err := n.hostPath("target_path", req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	unlock, err := n.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, _, err := n.readPaths(id)
	if err != nil {
		return nil, rpc.ToStatus(err, "unpublish")
	}
	published := slices.Contains(rec.Targets, target)
	if sv := n.get(id); sv != nil {
		sv.mu.Lock()
		published = published || sv.targets[target]
		sv.mu.Unlock()
	}
	if !published {
		// Never published here for this volume: touch nothing. A path
		// that is not there is unpublished already (CSI idempotency).
		if _, err := os.Lstat(target); errors.Is(err, os.ErrNotExist) {
			return &csi.NodeUnpublishVolumeResponse{}, nil
		}
		// A publication no record names (made by a node process from
		// before the records) is still this volume's when the file system
		// mounted there comes from the volume's own loop device.
		if ours, err := mount.MountedFrom(target, filepath.Join(n.fuseDir(id), id)); err != nil || !ours {
			return nil, rpc.Errf(codes.InvalidArgument, "target_path is not where volume %s is published on this node; unpublish acts only on its own targets", id)
		}
	}
	if err := mount.Unpublish(target, n.log); err != nil {
		return nil, rpc.ToStatus(err, "unpublish")
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, rpc.Errf(codes.Internal, "remove target %s: %v", target, err)
	}
	if sv := n.get(id); sv != nil {
		sv.mu.Lock()
		delete(sv.targets, target)
		sv.mu.Unlock()
	}
	return &csi.NodeUnpublishVolumeResponse{}, rpc.ToStatus(n.removeTarget(id, target), "unpublish")
}

// follow keeps a staged volume's engine in line with its volume record
// until ctx ends or the lease is lost: replicas the controller added are
// added (and copied in full), replicas it dropped are retired, and a
// fence naming this node at this epoch (ControllerUnpublishVolume) fences
// the engine and releases the lease.
func (n *Node) follow(ctx context.Context, sv *stagedVolume) {
	log := n.log.With("volume_id", sv.id, "epoch", sv.prim.Lease.Epoch())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sv.prim.Lease.Lost():
			cancel()
		case <-ctx.Done():
		}
	}()
	var index uint64
	for ctx.Err() == nil {
		rec, idx, err := n.cfg.Client.WatchVolume(ctx, sv.id, index, 20*time.Second)
		if err != nil {
			if ctx.Err() == nil {
				log.Debug("watch volume record", "error", err)
				_ = ctxutil.Sleep(ctx, time.Second)
			}
			continue
		}
		if idx == index {
			continue
		}
		index = idx
		if e, ok := rec.Fenced[n.cfg.NodeID]; ok && e == sv.prim.Lease.Epoch() {
			log.Warn("fenced by the controller (volume unpublished from this node): stopping I/O and releasing the lease")
			sv.prim.Engine.Fence(fmt.Errorf("%w: unpublished from node %s by the controller", replication.ErrFenced, n.cfg.NodeID))
			if err := sv.prim.Lease.Release(context.WithoutCancel(ctx)); err != nil {
				log.Warn("release fenced lease", "error", err)
			}
			return
		}
		if err := sv.prim.SetReplicas(ctx, n.replicaConfigs(rec)); err != nil {
			log.Warn("follow the volume's replica set", "error", err)
			index = 0 // try again on the next round
			_ = ctxutil.Sleep(ctx, time.Second)
		}
	}
}
