package main

// `saddlebag engine --mount PATH`: the whole node-side stack, standalone.
// The engine serves the volume as a FUSE file, a loop device turns that
// into a block device, the file system on it (made on first use) is
// mounted at PATH; SIGTERM unwinds it in order: unmount the file system,
// detach the loop device, stop FUSE, flush the engine.
//
// --mount and --nbd-socket are exclusive: an NBD client writing under a
// mounted file system would corrupt it.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/plugin/mount"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/frontend/fuse"
)

// mountFlags are the engine's --mount flags.
type mountFlags struct {
	path        string
	fsType      string
	options     string
	mkfsOptions string
	fuseDir     string
	hungTimeout time.Duration
}

func addMountFlags(fs *flag.FlagSet) *mountFlags {
	m := &mountFlags{}
	fs.StringVar(&m.path, "mount", "", "mount the volume's file system at this path (FUSE file + loop device) instead of serving NBD")
	fs.StringVar(&m.fsType, "fs-type", mount.FSExt4, "with --mount: file system made on first use and required after: ext4 or xfs")
	fs.StringVar(&m.options, "mount-flags", "", "with --mount: comma-separated mount options, e.g. noatime,discard")
	fs.StringVar(&m.mkfsOptions, "mkfs-options", "", "with --mount: extra mkfs arguments, space-separated, used on first use only")
	fs.StringVar(&m.fuseDir, "fuse-dir", "", "with --mount: directory the volume file is served in over FUSE (default /run/saddlebag/<volume>/fuse)")
	fs.DurationVar(&m.hungTimeout, "fuse-hung-timeout", fuse.DefaultHungTimeout,
		"with --mount: abort the FUSE connection when requests wait this long with none completing while the engine is not deliberately holding them (lease, min_in_sync)")
	return m
}

// check validates the --mount flags against the rest of the command line.
func (m *mountFlags) check(volume, nbdSocket string) error {
	if m.path == "" {
		return nil
	}
	if nbdSocket != "" {
		return errors.New("--mount and --nbd-socket are exclusive: an NBD client would write under the mounted file system")
	}
	if err := mount.ValidFSType(m.fsType); err != nil {
		return fmt.Errorf("--fs-type: %w", err)
	}
	if m.fuseDir == "" {
		m.fuseDir = filepath.Join("/run/saddlebag", volume, "fuse")
	}
	var err error
	if m.path, err = filepath.Abs(m.path); err != nil {
		return err
	}
	m.fuseDir, err = filepath.Abs(m.fuseDir)
	return err
}

// serveMounted runs the mounted stack over eng until ctx is done (or the
// FUSE server stops under it), then unwinds it and flushes the engine.
// clearLeftovers removes what an earlier engine here left behind when it
// died (a dead FUSE mount, a loop device, mounts on it), and refuses if
// that engine still runs. It runs before the engine starts: starting one
// would promise a new epoch and fence the live engine it then refuses to
// replace.
func (m *mountFlags) clearLeftovers(ctx context.Context, volume string, log hclog.Logger) error {
	rec, err := mount.Recover(ctx, mount.RecoverRequest{FUSEDir: m.fuseDir, BackingFile: filepath.Join(m.fuseDir, volume), Log: log})
	if err != nil {
		return fmt.Errorf("clear what an earlier engine left in %s: %w", m.fuseDir, err)
	}
	if rec.Server != mount.ServerAbsent {
		log.Warn("cleaned up after an earlier engine", "server", rec.Server, "unmounted", rec.Unmounted, "detached", rec.Detached)
	}
	return nil
}

func serveMounted(ctx context.Context, eng *replication.Engine, volume string, m *mountFlags, timeout time.Duration, log hclog.Logger) error {
	log = log.With("volume_id", volume)

	fm, err := fuse.New(ctx, eng, fuse.Config{Dir: m.fuseDir, Name: volume, HungTimeout: m.hungTimeout, Log: log})
	if err != nil {
		return err
	}
	stateFile := m.fuseDir + ".stage.json"
	staged, err := mount.Stage(ctx, mount.StageRequest{BackingFile: fm.Path(), StagingPath: m.path, FSType: m.fsType, Written: eng.Written(),
		MkfsOptions: strings.Fields(m.mkfsOptions), MountOptions: []string{m.options}, StateFile: stateFile, Log: log})
	if err != nil {
		return errors.Join(err, fm.Close())
	}
	log.Info("volume mounted", "mount", m.path, "device", staged.Device, "fs_type", staged.FSType,
		"formatted", staged.Formatted, "direct_io", staged.DirectIO, "fuse_file", fm.Path())

	var serveErr error
	select {
	case <-ctx.Done():
	case <-fm.Done():
		serveErr = fmt.Errorf("fuse server under %s stopped", m.path)
		if fm.Aborted() {
			serveErr = fmt.Errorf("%w: %w", serveErr, fuse.ErrAborted)
		}
		log.Error("fuse server stopped under the mount: unwinding", "aborted", fm.Aborted())
	}

	// Unwind in order: file system (synced first), loop device, FUSE. A
	// file system still in use is detached lazily rather than kept: this
	// process is going away and with it the volume file.
	log.Info("unmounting volume", "mount", m.path)
	uerr := mount.Unstage(context.WithoutCancel(ctx), mount.UnstageRequest{BackingFile: fm.Path(), StagingPath: m.path,
		StateFile: stateFile, Lazy: true, Log: log})
	ferr := fm.Close()

	shutdown(eng, timeout, log)
	return errors.Join(serveErr, uerr, ferr)
}
