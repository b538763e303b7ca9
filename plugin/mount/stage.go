package mount

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/hcl/volspec"
)

// ErrNotStaged means Publish was asked to bind a staging path that has no
// file system mounted.
var ErrNotStaged = errors.New("volume not staged")

// StageRequest describes a volume file to put a mounted file system on.
type StageRequest struct {
	// BackingFile is the volume file (the FUSE file) to attach.
	BackingFile string
	// StagingPath is where the file system is mounted; created if missing.
	StagingPath string
	// FSType is ext4 or xfs: made on first use, required to match after.
	FSType string
	// MkfsOptions are extra mkfs arguments, used on first use only.
	MkfsOptions []string
	// MountOptions are mount(8)-style options ("noatime", "discard", "ro").
	MountOptions []string
	// Written says the volume has been written to before (the replication
	// engine knows: Engine.Written). A blank device is then never
	// formatted, unless this node's checkpoint shows its own first mkfs
	// was interrupted: it fails with ErrHoldsData instead.
	Written bool
	// StateFile, when set, is where Stage checkpoints its progress so that
	// a retry after a crash in the middle of mkfs formats again instead
	// of mounting a half-made file system. It must be on persistent local
	// storage, one per volume; Unstage removes it.
	StateFile string
	Log       hclog.Logger
}

// Staged is the outcome of Stage.
type Staged struct {
	Device    string // the loop device, /dev/loopN
	FSType    string
	Formatted bool // this call made the file system
	DirectIO  bool // the loop device does direct I/O to the volume file
}

// stageState is the checkpoint Stage persists after each step.
type stageState struct {
	Step string `json:"step"`
	// Formatting is set before mkfs starts and cleared when it finished:
	// found set on a retry, it says the signature on the device may be a
	// half-made file system of ours, which is formatted again.
	Formatting bool   `json:"formatting,omitempty"`
	FSType     string `json:"fs_type,omitempty"`
	Device     string `json:"device,omitempty"`
}

const (
	stepAttach = "attach"
	stepProbe  = "probe"
	stepCheck  = "check"
	stepMount  = "mount"
	stepDone   = "staged"
)

// Stage attaches a loop device to req.BackingFile, makes a file system on
// it if it holds none, checks it and mounts it at req.StagingPath.
//
// Every step first looks at what is there (a loop device already bound to
// the file, a file system already on it, a mount already at the staging
// path), so calling Stage again, or after a crash halfway, converges on the
// same result. A file system that exists is never reformatted: one of
// another type fails with a *FSTypeMismatchError, unrecognised data with
// ErrUnknownContent, and nothing is mounted. Safe to call concurrently only
// for different volumes.
func Stage(ctx context.Context, req StageRequest) (res *Staged, err error) {
	if err := ValidFSType(req.FSType); err != nil {
		return nil, err
	}
	if req.BackingFile == "" || req.StagingPath == "" {
		return nil, fmt.Errorf("stage: backing file and staging path are required")
	}
	if req.Log == nil {
		req.Log = hclog.NewNullLogger()
	}
	log := req.Log.Named("mount").With("backing_file", req.BackingFile, "staging", req.StagingPath)
	st, err := loadState(req.StateFile)
	if err != nil {
		return nil, err
	}
	res = &Staged{FSType: req.FSType}
	attached := "" // a loop device this call attached
	defer func() {
		// A failed Stage leaves no loop device it attached itself.
		if err != nil && attached != "" {
			if derr := detachLoop(attached); derr != nil {
				log.Error("detach loop device after failed stage", "device", attached, "error", derr)
			}
		}
	}()
	// Every step verifies what is there before acting, so a retry runs
	// them all again from the start; what the checkpoint carries across a
	// crash is the one fact the system cannot show: that a mkfs began.
	st.Step = stepAttach
	for st.Step != stepDone {
		switch st.Step {
		case stepAttach:
			dev, fresh, err := ensureLoop(req.BackingFile, log)
			if err != nil {
				return nil, err
			}
			if fresh {
				attached = dev
			}
			res.Device, st.Device = dev, dev
			res.DirectIO = loopDirectIO(dev)
			mounted, err := mountedFrom(req.StagingPath, dev)
			if err != nil {
				return nil, err
			}
			if mounted != nil {
				if mounted.FSType != req.FSType {
					return nil, &FSTypeMismatchError{Device: dev, Found: mounted.FSType, Want: req.FSType}
				}
				log.Debug("already mounted", "device", dev)
				st.Step = stepDone
				continue
			}
			st.Step = stepProbe
		case stepProbe:
			found, err := probe(ctx, log, res.Device)
			if err != nil {
				return nil, err
			}
			redo := st.Formatting && st.FSType == req.FSType && (found == "" || found == req.FSType)
			switch {
			case found == "" && req.Written && !redo:
				return nil, fmt.Errorf("%s: %w", res.Device, ErrHoldsData)
			case found == "" || redo:
				if redo {
					log.Warn("an earlier mkfs did not finish: formatting again", "device", res.Device)
				}
				// Too small for the file system: say so, by the rule the
				// spec checks and CreateVolume use, rather than with
				// mkfs's usage text.
				if err := fitsFS(req.BackingFile, req.FSType); err != nil {
					return nil, err
				}
				st.Formatting, st.FSType = true, req.FSType
				if err := saveState(req.StateFile, st); err != nil {
					return nil, err
				}
				log.Info("making file system", "device", res.Device, "fs_type", req.FSType, "options", req.MkfsOptions)
				if err := format(ctx, log, res.Device, req.FSType, req.MkfsOptions); err != nil {
					return nil, err
				}
				st.Formatting = false
				res.Formatted = true
			case found != req.FSType:
				return nil, &FSTypeMismatchError{Device: res.Device, Found: found, Want: req.FSType}
			default:
				log.Info("found existing file system", "device", res.Device, "fs_type", found)
			}
			st.Step = stepCheck
		case stepCheck:
			if err := check(ctx, log, res.Device, req.FSType); err != nil {
				return nil, err
			}
			st.Step = stepMount
		case stepMount:
			if err := mountFS(res.Device, req.StagingPath, req.FSType, req.MountOptions); err != nil {
				return nil, err
			}
			log.Info("file system mounted", "device", res.Device, "fs_type", req.FSType, "options", req.MountOptions)
			st.Step = stepDone
		}
		if err := saveState(req.StateFile, st); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// fitsFS checks that the volume file backing is large enough for a file
// system of type fsType (volspec.FitsFS): nil, or an error wrapping
// ErrTooSmall and the *volspec.SizeError.
func fitsFS(backing, fsType string) error {
	fi, err := os.Stat(backing)
	if err != nil {
		return fmt.Errorf("size of %s: %w", backing, err)
	}
	if err := volspec.FitsFS(fsType, fi.Size()); err != nil {
		return fmt.Errorf("%w: %w", ErrTooSmall, err)
	}
	return nil
}

// ensureLoop returns the loop device bound to backing, attaching one if
// there is none; fresh says it attached one.
func ensureLoop(backing string, log hclog.Logger) (dev string, fresh bool, err error) {
	loops, err := loopsOf(backing)
	if err != nil {
		return "", false, err
	}
	if len(loops) > 0 {
		return loops[0], false, nil
	}
	dev, err = attachLoop(backing)
	if err != nil {
		return "", false, err
	}
	log.Info("loop device attached", "device", dev, "direct_io", loopDirectIO(dev))
	return dev, true, nil
}

// mountedFrom returns the mount on top of path if it is of dev, nil if
// path is not a mount point, and ErrPathBusy if something else is there.
func mountedFrom(path, dev string) (*mountEntry, error) {
	mounts, err := readMounts()
	if err != nil {
		return nil, err
	}
	at := mountsAt(mounts, path)
	if len(at) == 0 {
		return nil, nil
	}
	maj, min, err := blockDevNumber(dev)
	if err != nil {
		return nil, err
	}
	top := at[len(at)-1]
	if top.Major != maj || top.Minor != min {
		return nil, fmt.Errorf("%w: %s is a mount point of %s (%d:%d), not of %s", ErrPathBusy, path, top.Source, top.Major, top.Minor, dev)
	}
	return &top, nil
}

func mountFS(dev, path, fsType string, opts []string) error {
	if err := os.MkdirAll(path, 0o750); err != nil {
		return fmt.Errorf("create staging path: %w", err)
	}
	flags, data := ParseMountOptions(opts)
	if err := unix.Mount(dev, path, fsType, flags, data); err != nil {
		return fmt.Errorf("mount %s (%s) at %s with %q: %w", dev, fsType, path, data, err)
	}
	return nil
}

// UnstageRequest names what Stage set up.
type UnstageRequest struct {
	BackingFile string
	StagingPath string
	StateFile   string
	// Lazy detaches a staging mount that is still in use instead of
	// failing with ErrPathBusy; its file system then goes away when the
	// last user closes it, and I/O after the volume file is gone fails.
	Lazy bool
	Log  hclog.Logger
}

// Unstage undoes Stage: it syncs and unmounts the file system at the
// staging path (only a mount of this volume's loop device), detaches the
// loop device and removes the checkpoint. Nothing left to undo is not an
// error, so it is idempotent.
func Unstage(ctx context.Context, req UnstageRequest) error {
	if req.Log == nil {
		req.Log = hclog.NewNullLogger()
	}
	log := req.Log.Named("mount").With("backing_file", req.BackingFile, "staging", req.StagingPath)
	loops, err := loopsOf(req.BackingFile)
	if err != nil {
		return err
	}
	for _, dev := range loops {
		for {
			m, err := mountedFrom(req.StagingPath, dev)
			if errors.Is(err, ErrPathBusy) {
				break // something else is mounted there: not ours to undo
			}
			if err != nil {
				return err
			}
			if m == nil {
				break
			}
			if err := unmount(req.StagingPath, req.Lazy, log); err != nil {
				return err
			}
		}
		if err := detachLoop(dev); err != nil {
			return err
		}
		log.Info("loop device detached", "device", dev)
	}
	if left, err := waitLoopsGone(req.BackingFile, detachSettle); err != nil {
		return err
	} else if len(left) > 0 {
		log.Warn("loop device still bound: it detaches when its last user closes it", "devices", left)
	}
	if req.StateFile != "" {
		if err := os.Remove(req.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stage checkpoint: %w", err)
		}
	}
	return nil
}

// unmount syncs the file system at path and unmounts it; a busy one fails
// with ErrPathBusy unless lazy.
func unmount(path string, lazy bool, log hclog.Logger) error {
	if fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		if err := unix.Syncfs(fd); err != nil {
			log.Error("sync before unmount failed", "path", path, "error", err)
		}
		unix.Close(fd)
	}
	err := unix.Unmount(path, 0)
	if errors.Is(err, unix.EBUSY) && lazy {
		log.Warn("file system still in use: detaching it lazily", "path", path)
		err = unix.Unmount(path, unix.MNT_DETACH)
	}
	switch {
	case err == nil:
		log.Info("unmounted", "path", path)
		return nil
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("%w: unmount %s: %w", ErrPathBusy, path, err)
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT):
		return nil // not a mount point (any more)
	default:
		return fmt.Errorf("unmount %s: %w", path, err)
	}
}

// Publish bind-mounts the file system staged at stagingPath onto target,
// read-only if asked. Idempotent: a bind already there is adjusted to the
// asked read-only state; a different mount at target is ErrPathBusy.
func Publish(stagingPath, target string, readOnly bool) error {
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	staged := mountsAt(mounts, stagingPath)
	if len(staged) == 0 {
		return fmt.Errorf("%w: %s is not a mount point", ErrNotStaged, stagingPath)
	}
	src := staged[len(staged)-1]
	if at := mountsAt(mounts, target); len(at) > 0 {
		top := at[len(at)-1]
		if top.Major != src.Major || top.Minor != src.Minor || top.Root != src.Root {
			return fmt.Errorf("%w: %s is already a mount point of %s", ErrPathBusy, target, top.Source)
		}
		if hasOption(top.Options, "ro") == readOnly {
			return nil
		}
		return remountBind(target, readOnly)
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return fmt.Errorf("create target path: %w", err)
	}
	if err := unix.Mount(stagingPath, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s to %s: %w", stagingPath, target, err)
	}
	if readOnly {
		return remountBind(target, true)
	}
	return nil
}

func remountBind(target string, readOnly bool) error {
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT)
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("", target, "", flags, ""); err != nil {
		return fmt.Errorf("remount %s read-only=%v: %w", target, readOnly, err)
	}
	return nil
}

// Unpublish unmounts every mount at target. Nothing mounted is not an
// error; a busy mount is ErrPathBusy.
func Unpublish(target string, log hclog.Logger) error {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	for {
		mounts, err := readMounts()
		if err != nil {
			return err
		}
		if len(mountsAt(mounts, target)) == 0 {
			return nil
		}
		if err := unmount(target, false, log); err != nil {
			return err
		}
	}
}

func loadState(path string) (stageState, error) {
	var st stageState
	if path == "" {
		return st, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read stage checkpoint: %w", err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("decode stage checkpoint %s: %w", path, err)
	}
	return st, nil
}

// saveState writes the checkpoint atomically and durably (temp file,
// fsync, rename, fsync the directory).
func saveState(path string, st stageState) error {
	if path == "" {
		return nil
	}
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("stage checkpoint dir: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write stage checkpoint: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("write stage checkpoint: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// MountedFrom reports whether path is a mount point of a loop device
// backed by backing: the file system staged from the volume file, or a
// bind mount of it (a publication). Anything else mounted there, or
// nothing, is false.
func MountedFrom(path, backing string) (bool, error) {
	loops, err := loopsOf(backing)
	if err != nil {
		return false, err
	}
	for _, dev := range loops {
		m, err := mountedFrom(path, dev)
		if errors.Is(err, ErrPathBusy) {
			continue
		}
		if err != nil {
			return false, err
		}
		if m != nil {
			return true, nil
		}
	}
	return false, nil
}
