package node

// Volumes that outlive the node process (issue 13). With a descriptor
// keeper (Config.Keeper, internal/fdkeeper), each staged volume's
// FUSE connection is relayed (fuse.NewHandoff) and a
// duplicate of its /dev/fuse descriptor is parked in the keeper with
// what a successor needs to serve it again (parkedVolume). Then:
//
//   - a graceful stop (SIGTERM: an upgrade, an allocation restart) hands
//     each parked volume over instead of unstaging it: no new request is
//     read (they wait in the kernel), those read are answered, the engine
//     is shut down cleanly and the lease released (HandOver);
//   - a crash (SIGKILL, OOM, panic) leaves requests read and unanswered;
//     the kernel keeps them, and the descriptor lives on in the keeper;
//   - the next node process, before it serves CSI, takes every parked
//     volume back (Adopt): the primary lease at a new epoch (the agent
//     has already taken over the dead process's session), the engine, and
//     the FUSE connection, whose unanswered requests the kernel resends.
//
// The loop device, the file system on it and the task's bind mount never
// change; the task sees its I/O wait, not fail.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/internal/ctxutil"
	"github.com/saddlebag/saddlebag/internal/fdkeeper"
	"github.com/saddlebag/saddlebag/internal/primary"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/encrypt"
	"github.com/saddlebag/saddlebag/replication/frontend/fuse"
)

// parkedVolume is the state a successor needs, kept beside the
// descriptor in the keeper's memory (never on disk). Key is an encrypted
// volume's data key: the keeper's socket admits only root.
type parkedVolume struct {
	ID        string `json:"id"`
	Staging   string `json:"staging"`
	Block     bool   `json:"block"`
	Device    string `json:"device"`
	Size      int64  `json:"size"`
	StateFile string `json:"state_file"`
	Init      []byte `json:"init"`
	Key       []byte `json:"key,omitempty"`
}

// DefaultHandOverTimeout bounds how long a graceful stop waits for the
// FUSE requests already read to be answered before it hands over (the
// successor has the kernel resend any left).
const DefaultHandOverTimeout = 10 * time.Second

func (n *Node) mountFUSE(ctx context.Context, dev replication.Device, id string) (*fuse.Mount, error) {
	cfg := fuse.Config{Dir: n.fuseDir(id), Name: id, HungTimeout: n.cfg.FUSEHungTimeout, Log: n.log.With("volume_id", id)}
	if n.cfg.Keeper == nil {
		return fuse.New(ctx, dev, cfg)
	}
	return fuse.NewHandoff(ctx, dev, cfg)
}

// park deposits sv's descriptor and state in the keeper. A failure
// leaves the volume staged and served, only not protected against a
// restart of this process; it is logged and retried by keepParked.
func (n *Node) park(sv *stagedVolume, key []byte) {
	if n.cfg.Keeper == nil {
		return
	}
	conn, err := sv.fuse.Conn()
	if err != nil {
		n.log.Warn("volume cannot be handed over across restarts", "volume_id", sv.id, "error", err)
		return
	}
	meta, err := json.Marshal(parkedVolume{ID: sv.id, Staging: sv.stagingPath, Block: sv.block, Device: sv.device, Size: sv.size,
		StateFile: sv.stateFile, Init: conn.Init, Key: key})
	if err != nil {
		conn.Dev.Close()
		return
	}
	sv.parkMeta, sv.parkDev = meta, conn.Dev
	if err := n.cfg.Keeper.Put(sv.id, meta, conn.Dev); err != nil {
		n.log.Warn("descriptor keeper unreachable: the volume would see I/O errors if this process died now; retrying", "volume_id", sv.id, "error", err)
		return
	}
	n.log.Info("volume parked in the descriptor keeper: it survives a restart of this process", "volume_id", sv.id)
}

// unpark forgets sv in the keeper (after an unstage).
func (n *Node) unpark(sv *stagedVolume) {
	if n.cfg.Keeper == nil || sv.parkDev == nil {
		return
	}
	if err := n.cfg.Keeper.Drop(sv.id); err != nil {
		n.log.Warn("drop the volume from the descriptor keeper", "volume_id", sv.id, "error", err)
	}
	sv.parkDev.Close()
	sv.parkDev = nil
}

// keepParked puts back every staged volume the keeper lost (it was
// restarted), every interval, until ctx ends.
func (n *Node) keepParked(ctx context.Context, interval time.Duration) {
	for ctxutil.Sleep(ctx, interval) == nil {
		names, err := n.cfg.Keeper.Names()
		if err != nil {
			continue
		}
		n.mu.Lock()
		var missing []*stagedVolume
		for id, sv := range n.staged {
			if sv.parkDev != nil && !slices.Contains(names, id) {
				missing = append(missing, sv)
			}
		}
		n.mu.Unlock()
		for _, sv := range missing {
			if err := n.cfg.Keeper.Put(sv.id, sv.parkMeta, sv.parkDev); err != nil {
				n.log.Warn("park the volume in the descriptor keeper again", "volume_id", sv.id, "error", err)
				continue
			}
			n.log.Info("volume parked again in the descriptor keeper (it had restarted)", "volume_id", sv.id)
		}
	}
}

// HandOver stops this process's part in every staged volume without
// unstaging the ones parked in the keeper: each one's FUSE requests are
// answered and no new one read, its engine shut down cleanly and its
// lease released; the next node process adopts them. Volumes not parked
// are unstaged as Shutdown does.
func (n *Node) HandOver(ctx context.Context) {
	n.mu.Lock()
	vols := make([]*stagedVolume, 0, len(n.staged))
	for _, sv := range n.staged {
		vols = append(vols, sv)
	}
	n.mu.Unlock()
	for _, sv := range vols {
		names, err := n.cfg.Keeper.Names()
		if sv.parkDev == nil || err != nil || !slices.Contains(names, sv.id) {
			n.log.Warn("volume not parked in the descriptor keeper: unstaging it", "volume_id", sv.id, "error", err)
			if err := n.unstage(ctx, sv, true); err != nil {
				n.log.Error("unstage at shutdown", "volume_id", sv.id, "error", err)
			}
			continue
		}
		start := time.Now()
		sv.stopWatch()
		<-sv.watchDone
		if err := sv.fuse.HandOver(n.handOverTimeout()); err != nil {
			n.log.Warn("hand over", "volume_id", sv.id, "error", err)
		}
		if err := sv.prim.Demote(context.WithoutCancel(ctx)); err != nil {
			n.log.Warn("demote at hand-over", "volume_id", sv.id, "error", err)
		}
		sv.parkDev.Close()
		n.mu.Lock()
		delete(n.staged, sv.id)
		n.mu.Unlock()
		n.log.Info("volume handed over: its I/O waits in the kernel for the next node process", "volume_id", sv.id,
			"took", time.Since(start).String())
	}
}

func (n *Node) handOverTimeout() time.Duration {
	if n.cfg.HandOverTimeout > 0 {
		return n.cfg.HandOverTimeout
	}
	return DefaultHandOverTimeout
}

// Adopt takes back every volume parked in the keeper (by a previous
// process, gracefully or not) and starts keeping them parked. It
// returns once each adoption has started; each one holds its volume's
// lock until done, so CSI calls on it meanwhile are Aborted (Nomad
// retries). Call it before serving CSI.
func (n *Node) Adopt(ctx context.Context) error {
	if n.cfg.Keeper == nil {
		return nil
	}
	entries, err := n.cfg.Keeper.List()
	if err != nil {
		n.log.Warn("descriptor keeper unreachable at start: no volume to adopt; staging goes on, parking retries", "error", err)
		entries = nil
	}
	for _, e := range entries {
		unlock := n.locks.TryLock(e.Name)
		if unlock == nil {
			e.File.Close()
			continue
		}
		go func() {
			defer unlock()
			n.adopt(ctx, e)
		}()
	}
	go n.keepParked(ctx, 2*time.Second)
	return nil
}

func (n *Node) adopt(ctx context.Context, e fdkeeper.Entry) {
	start := time.Now()
	log := n.log.With("volume_id", e.Name)
	var pv parkedVolume
	err := json.Unmarshal(e.Meta, &pv)
	if err == nil && pv.ID != e.Name {
		err = fmt.Errorf("state names volume %q", pv.ID)
	}
	if err == nil {
		err = n.adoptVolume(ctx, pv, e.File)
	}
	if err == nil {
		log.Info("volume adopted from the previous node process: serving again", "took", time.Since(start).String())
		return
	}
	if ctx.Err() != nil {
		e.File.Close()
		return
	}
	// It cannot be served from here: end its connection so that the
	// task sees errors (and Nomad restages it) rather than waiting
	// forever, and forget it.
	log.Error("cannot adopt a parked volume: aborting its FUSE connection; the task sees I/O errors and the volume must be staged again", "error", err)
	var st unix.Stat_t
	if serr := unix.Stat(n.fuseDir(e.Name), &st); serr == nil {
		_ = fuse.AbortConnection(unix.Minor(st.Dev))
	}
	e.File.Close()
	if err := n.cfg.Keeper.Drop(e.Name); err != nil {
		log.Warn("drop from the descriptor keeper", "error", err)
	}
}

func (n *Node) adoptVolume(ctx context.Context, pv parkedVolume, devFile *os.File) error {
	log := n.log.With("volume_id", pv.ID)
	rec, _, err := n.cfg.Client.GetVolume(ctx, pv.ID)
	if err != nil {
		return fmt.Errorf("read volume: %w", err)
	}
	if rec.State != leader.VolumeReady {
		return fmt.Errorf("volume %s is %s", pv.ID, rec.State)
	}
	if (rec.Encryption != nil) != (pv.Key != nil) {
		return errors.New("the volume's encryption does not match its parked state")
	}
	p, _ := volspec.ParseParams(rec.Spec.Parameters)
	pcfg := primary.Config{Agent: n.cfg.Agent, Client: n.cfg.Client, Volume: pv.ID, Size: rec.Spec.SizeBytes,
		Replicas: n.replicaConfigs(rec), Want: rec.Spec.Replicas, MinInSync: p.MinInSync,
		Timeout: n.cfg.ReplicaTimeout, Dial: n.cfg.Dial, Log: n.cfg.Log}
	pctx, cancel := context.WithTimeout(ctx, n.cfg.StageTimeout)
	prim, err := primary.Promote(pctx, pcfg)
	cancel()
	if err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	var dev replication.Device = prim.Engine
	if pv.Key != nil {
		if dev, err = encrypt.NewDevice(prim.Engine, pv.Key); err != nil {
			_ = prim.Demote(context.WithoutCancel(ctx))
			return err
		}
	}
	keep, err := dupOSFile(devFile)
	if err != nil {
		_ = prim.Demote(context.WithoutCancel(ctx))
		return err
	}
	fm, err := fuse.Adopt(ctx, dev, fuse.Config{Dir: n.fuseDir(pv.ID), Name: pv.ID,
		HungTimeout: n.cfg.FUSEHungTimeout, Log: log}, fuse.Conn{Dev: devFile, Init: pv.Init})
	if err != nil {
		keep.Close()
		_ = prim.Demote(context.WithoutCancel(ctx))
		return fmt.Errorf("serve the volume file again: %w", err)
	}
	sv := &stagedVolume{id: pv.ID, stagingPath: pv.Staging, block: pv.Block, size: pv.Size, device: pv.Device,
		prim: prim, fuse: fm, stateFile: pv.StateFile, keyRec: rec.Encryption, targets: map[string]bool{}, parkDev: keep}
	sv.parkMeta, _ = json.Marshal(pv)
	if paths, ok, err := n.readPaths(pv.ID); err == nil && ok {
		for _, t := range paths.Targets {
			sv.targets[t] = true
		}
	}
	wctx, stop := context.WithCancel(context.Background())
	sv.stopWatch, sv.watchDone = stop, make(chan struct{})
	go func() {
		defer close(sv.watchDone)
		n.follow(wctx, sv)
	}()
	n.mu.Lock()
	n.staged[pv.ID] = sv
	n.mu.Unlock()
	log.Info("volume staged again after a restart of the node process", "staging", pv.Staging, "device", pv.Device,
		"epoch", prim.Lease.Epoch(), "fuse_dir", filepath.Clean(n.fuseDir(pv.ID)))
	return nil
}

// dupOSFile duplicates f's descriptor without f.Fd() (which would put
// the shared open file in blocking mode).
func dupOSFile(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(raw uintptr) { fd, derr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}
