package mount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/replication/frontend/fuse"
)

// Server states Recover reports.
const (
	ServerAbsent = "absent" // no FUSE mount at the directory
	ServerDead   = "dead"   // the connection is gone (the server exited or was killed)
	ServerHung   = "hung"   // a read did not return within ProbeTimeout
	ServerAlive  = "alive"  // the server answered
)

const (
	defaultProbeTimeout = 5 * time.Second
	abortWait           = 10 * time.Second
)

// RecoverRequest names what a volume's engine left on this node.
type RecoverRequest struct {
	// FUSEDir is the FUSE mount point the engine served the volume in.
	FUSEDir string
	// BackingFile is the volume file inside FUSEDir (the loop device's
	// backing file).
	BackingFile string
	// ProbeTimeout bounds the read that tells a live server from a hung
	// one. Default 5s.
	ProbeTimeout time.Duration
	// Force tears everything down even when the server still answers.
	Force bool
	Log   hclog.Logger
}

// Recovered says what Recover found and did.
type Recovered struct {
	Server    string   // ServerAbsent, ServerDead, ServerHung or ServerAlive
	Aborted   bool     // the FUSE connection was aborted
	Unmounted []string // file system and bind mounts detached (lazily)
	Detached  []string // loop devices detached
	// Pending lists loop devices still bound because a lazily detached
	// file system on them is still open somewhere; the kernel detaches
	// them when it is closed.
	Pending []string
}

// Recover cleans up after a volume's engine died or hung under a mounted
// file system: every mount of the volume's loop devices (staging and bind
// mounts) is detached lazily, the loop devices are detached, and the FUSE
// mount is detached, so that the volume can be staged again here or on
// another node. A hung server (a read through it does not return within
// ProbeTimeout) has its connection aborted first: the kernel never times
// FUSE requests out, so nothing else would unblock the I/O stuck on it.
//
// When the server answers, Recover changes nothing and fails with
// ErrServerAlive unless Force is set. It is idempotent: with nothing left,
// it reports ServerAbsent and does nothing. Not safe to call concurrently
// for the same volume.
func Recover(ctx context.Context, req RecoverRequest) (*Recovered, error) {
	if req.FUSEDir == "" || req.BackingFile == "" {
		return nil, fmt.Errorf("recover: fuse dir and backing file are required")
	}
	if req.ProbeTimeout <= 0 {
		req.ProbeTimeout = defaultProbeTimeout
	}
	if req.Log == nil {
		req.Log = hclog.NewNullLogger()
	}
	log := req.Log.Named("recover").With("fuse_dir", req.FUSEDir)
	res := &Recovered{Server: ServerAbsent}

	mounts, err := readMounts()
	if err != nil {
		return nil, err
	}
	fuseMounts := slices.DeleteFunc(mountsAt(mounts, req.FUSEDir), func(m mountEntry) bool {
		return !strings.HasPrefix(m.FSType, "fuse")
	})
	if len(fuseMounts) > 0 {
		top := fuseMounts[len(fuseMounts)-1]
		state, wait := probeFUSE(req.BackingFile, req.ProbeTimeout)
		res.Server = state
		switch {
		case state == ServerAlive && !req.Force:
			return res, fmt.Errorf("%w: %s", ErrServerAlive, req.FUSEDir)
		case state == ServerHung || state == ServerAlive:
			log.Warn("aborting fuse connection", "server", state, "connection", top.Minor)
			if err := fuse.AbortConnection(top.Minor); err != nil {
				return res, err
			}
			res.Aborted = true
			select {
			case <-wait:
			case <-time.After(abortWait):
				return res, fmt.Errorf("fuse connection %d aborted but a read through it is still blocked", top.Minor)
			case <-ctx.Done():
				return res, ctx.Err()
			}
		}
		log.Info("fuse server state", "server", state)
	}

	loops, err := loopsOf(req.BackingFile)
	if err != nil {
		return res, err
	}
	var errs []error
	for _, dev := range loops {
		maj, min, err := blockDevNumber(dev)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		on := mountsOfDevice(mounts, maj, min)
		slices.Reverse(on) // bind mounts made later sit on top
		for _, m := range on {
			if err := unix.Unmount(m.Point, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("lazy unmount %s: %w", m.Point, err))
				continue
			}
			log.Info("detached mount", "path", m.Point, "device", dev)
			res.Unmounted = append(res.Unmounted, m.Point)
		}
		if err := detachLoop(dev); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("detached loop device", "device", dev)
		res.Detached = append(res.Detached, dev)
	}
	slices.Reverse(fuseMounts)
	for range fuseMounts {
		if err := unix.Unmount(req.FUSEDir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("lazy unmount %s: %w", req.FUSEDir, err))
			break
		}
		res.Unmounted = append(res.Unmounted, req.FUSEDir)
	}
	if len(res.Detached) > 0 {
		res.Pending, err = waitLoopsGone(req.BackingFile, detachSettle)
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

// probeFUSE reads the first 4 KiB of the volume file in a goroutine and
// classifies the server by the outcome within timeout. When it reports
// ServerHung the read is still blocked: the returned channel closes when it
// returns, which it does once the connection is aborted.
func probeFUSE(path string, timeout time.Duration) (string, <-chan struct{}) {
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		var f *os.File
		if f, err = os.Open(path); err != nil {
			return
		}
		defer f.Close()
		_, err = f.ReadAt(make([]byte, 4096), 0)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		return ServerHung, done
	}
	if errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED) {
		return ServerDead, done
	}
	// Any answer, even an I/O error from a fenced engine, comes from a
	// running server.
	return ServerAlive, done
}
