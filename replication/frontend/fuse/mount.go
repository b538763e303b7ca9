package fuse

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/replication"
)

const (
	fuseFileIno       = 2
	fuseMaxWrite      = 1 << 20
	fuseMaxBackground = 64
	fuseAttrTimeout   = time.Hour // nothing about the tree ever changes
	fuseBlockSize     = 4096
	// ConnectionsDir is where the fusectl file system exposes each FUSE
	// connection's control files (abort, waiting).
	ConnectionsDir = "/sys/fs/fuse/connections"
	// DefaultHungTimeout is how long the watchdog lets requests wait
	// with none completing, while the Device is not deliberately holding
	// them, before it aborts the connection. It must exceed the longest
	// stall the Device does not report as a hold: a replica timeout and the
	// drop that follows. Deliberate holds (HoldingDevice: an engine waiting
	// for the primary lease, for min_in_sync replicas, or for an in-sync
	// set change to be recorded) do not count towards it, however long.
	DefaultHungTimeout = 2 * time.Minute
)

var (
	// ErrBusy means the FUSE file is still in use (a loop device is
	// attached to it, or a process has it open), so it cannot be unmounted
	// cleanly.
	ErrBusy = errors.New("fuse file still in use")
	// ErrAborted means the FUSE connection was aborted (by the
	// watchdog, by Abort, or by Close after a failed unmount).
	ErrAborted = errors.New("fuse connection aborted")
)

// Config configures New.
type Config struct {
	// Dir is the mount point; it is created if missing. It must not be
	// a FUSE mount already (plugin/mount.Recover clears a dead one).
	Dir string
	// Name is the volume file's name inside Dir.
	Name string
	// HungTimeout: when requests are waiting and none has completed for
	// this long, the watchdog aborts the connection (every pending and
	// later request then fails with an error, and a file system above
	// goes read-only) rather than leave I/O blocked forever: the kernel's
	// FUSE request timeout is 0. Time during which the Device reports a
	// deliberate hold (HoldingDevice) does not count. Zero means
	// DefaultHungTimeout; a negative value disables the watchdog.
	HungTimeout time.Duration
	Log         hclog.Logger
}

// Mount is a mounted FUSE file serving a Device.
//
// Contract: methods are safe to call concurrently. Unmount and Close are
// idempotent. Teardown order when a loop device sits on the file: detach
// the loop device first, then Unmount (or Close).
type Mount struct {
	dir, path string
	conn      uint32 // fusectl connection id (minor of the mount's st_dev)
	srv       *gofuse.Server
	relay     *fuseRelay // nil unless the connection can be handed over
	hung      time.Duration
	fs        *fuseFS
	log       hclog.Logger
	cancel    context.CancelFunc

	done    chan struct{} // closed when the server loop has returned
	stop    chan struct{} // closed by Close/Unmount: stops the watchdog
	stopped sync.Once
	wg      sync.WaitGroup // serve loop and watchdog

	mu      sync.Mutex
	mounted bool
	aborted atomic.Bool
}

// New mounts a FUSE file system at cfg.Dir holding one file,
// cfg.Name, of dev.Size() bytes whose reads, writes, fsyncs and hole
// punches go to dev. It returns once the mount answers requests.
func New(ctx context.Context, dev replication.Device, cfg Config) (*Mount, error) {
	dir, err := mountDir(cfg)
	if err != nil {
		return nil, err
	}
	m, fsys, opts := newMount(ctx, dev, cfg, dir)
	opts.DirectMountStrict = true
	srv, err := gofuse.NewServer(fsys, dir, opts)
	if err != nil {
		m.cancel()
		return nil, fmt.Errorf("mount fuse at %s: %w", dir, err)
	}
	m.srv = srv
	m.wg.Go(func() {
		defer close(m.done)
		srv.Serve()
	})
	if err := srv.WaitMount(); err != nil {
		m.Close()
		return nil, fmt.Errorf("mount fuse at %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		m.Close()
		return nil, fmt.Errorf("stat fuse mount %s: %w", dir, err)
	}
	m.conn = unix.Minor(st.Dev)
	if m.hung > 0 {
		m.wg.Go(func() { m.watchdog(m.hung) })
	}
	m.log.Info("serving volume file over fuse", "path", m.path, "size", dev.Size(), "connection", m.conn)
	return m, nil
}

// newMount makes the file system over dev and the mount's state,
// before anything is mounted or served.
func newMount(ctx context.Context, dev replication.Device, cfg Config, dir string) (*Mount, *fuseFS, *gofuse.MountOptions) {
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.HungTimeout == 0 {
		cfg.HungTimeout = DefaultHungTimeout
	}
	lg := cfg.Log.Named("fuse").With("dir", dir, "file", cfg.Name)
	reqCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	fsys := &fuseFS{
		RawFileSystem: gofuse.NewDefaultRawFileSystem(),
		dev:           dev,
		name:          cfg.Name,
		ctx:           reqCtx,
		log:           lg,
		uid:           uint32(os.Getuid()),
		gid:           uint32(os.Getgid()),
		mtime:         uint64(time.Now().Unix()),
	}
	opts := &gofuse.MountOptions{
		MaxWrite:           fuseMaxWrite,
		MaxBackground:      fuseMaxBackground,
		ExtraCapabilities:  gofuse.CAP_ASYNC_DIO,
		DisableReadDirPlus: true,
		DisableXAttrs:      true,
		FsName:             "saddlebag:" + cfg.Name,
		Name:               "saddlebag",
		Logger:             log.New(lg.StandardWriter(&hclog.StandardLoggerOptions{ForceLevel: hclog.Warn}), "", 0),
	}
	m := &Mount{dir: dir, path: filepath.Join(dir, cfg.Name), fs: fsys, log: lg, cancel: cancel, hung: cfg.HungTimeout,
		done: make(chan struct{}), stop: make(chan struct{}), mounted: true}
	return m, fsys, opts
}

// Path is the volume file's path.
func (m *Mount) Path() string { return m.path }

// Dir is the mount point.
func (m *Mount) Dir() string { return m.dir }

// Connection is the FUSE connection id: the name of its directory under
// ConnectionsDir.
func (m *Mount) Connection() uint32 { return m.conn }

// Done is closed when the server has stopped: after Unmount or Close, or
// when the connection was aborted or the mount removed from outside.
func (m *Mount) Done() <-chan struct{} { return m.done }

// Aborted reports whether the connection was aborted.
func (m *Mount) Aborted() bool { return m.aborted.Load() }

// Unmount unmounts cleanly and waits for the server to stop. It fails with
// an error wrapping ErrBusy, changing nothing, while the file is in
// use: detach the loop device first.
func (m *Mount) Unmount() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.mounted {
		return nil
	}
	if m.aborted.Load() {
		// The server loop ends only when every request handler has
		// returned, and srv.Unmount waits for it: let requests the
		// Device still holds return, since nobody can receive their
		// replies any more.
		m.cancel()
	}
	if err := m.unmountServer(); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("unmount %s: %w: %w", m.dir, ErrBusy, err)
		}
		return fmt.Errorf("unmount %s: %w", m.dir, err)
	}
	m.finishLocked()
	m.log.Info("fuse file unmounted")
	return nil
}

// unmountServer unmounts and waits for the server loops.
func (m *Mount) unmountServer() error {
	if m.relay == nil {
		return m.srv.Unmount()
	}
	// The kernel ends the connection at unmount (every reader of its
	// descriptor gets ENODEV), and go-fuse sees the relay's socket close.
	if err := unix.Unmount(m.dir, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return err
	}
	m.relay.stop()
	m.relay.closeDev()
	return nil
}

// Close stops serving whatever state the mount is in: it unmounts cleanly
// when it can, and otherwise detaches the mount lazily and aborts the
// connection, failing any request still pending (a file system above sees
// I/O errors, as after a crash). It waits for the server to stop.
func (m *Mount) Close() error {
	err := m.Unmount()
	if err == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.mounted {
		return nil
	}
	m.log.Warn("clean fuse unmount failed: detaching lazily and aborting the connection", "error", err)
	// Requests held in the Device (e.g. a held engine) must return for
	// the server loop to end.
	m.cancel()
	var errs []error
	if uerr := unix.Unmount(m.dir, unix.MNT_DETACH); uerr != nil && !errors.Is(uerr, unix.EINVAL) {
		errs = append(errs, fmt.Errorf("lazy unmount %s: %w", m.dir, uerr))
	}
	if m.conn != 0 {
		if aerr := m.abortLocked(); aerr != nil {
			errs = append(errs, aerr)
		}
	}
	<-m.done
	m.finishLocked()
	return errors.Join(errs...)
}

// Abort aborts the FUSE connection: every pending and later request fails
// at once. The mount point stays (reporting ENOTCONN) until Close.
func (m *Mount) Abort() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.abortLocked()
}

func (m *Mount) abortLocked() error {
	if m.aborted.Swap(true) {
		return nil
	}
	m.log.Error("aborting fuse connection", "connection", m.conn)
	return AbortConnection(m.conn)
}

// finishLocked waits for the serve loop and watchdog. Callers hold mu.
func (m *Mount) finishLocked() {
	m.stopped.Do(func() { close(m.stop) })
	m.wg.Wait()
	m.cancel()
	if m.relay != nil {
		m.relay.stop()
		m.relay.closeDev()
	}
	m.mounted = false
}

// AbortConnection writes 1 to the abort file of FUSE connection id,
// mounting fusectl at ConnectionsDir first if needed. Every pending
// and later request on the connection then fails; this is the only way to
// unblock I/O stuck on a hung FUSE server.
func AbortConnection(id uint32) error {
	abort := filepath.Join(ConnectionsDir, strconv.FormatUint(uint64(id), 10), "abort")
	if _, err := os.Stat(abort); errors.Is(err, os.ErrNotExist) {
		if merr := unix.Mount("fusectl", ConnectionsDir, "fusectl", 0, ""); merr != nil && !errors.Is(merr, unix.EBUSY) {
			return fmt.Errorf("mount fusectl at %s: %w", ConnectionsDir, merr)
		}
	}
	f, err := os.OpenFile(abort, os.O_WRONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil // the connection is already gone
	}
	if err != nil {
		return fmt.Errorf("abort fuse connection %d: %w", id, err)
	}
	defer f.Close()
	if _, err := f.WriteString("1"); err != nil {
		return fmt.Errorf("abort fuse connection %d: %w", id, err)
	}
	return nil
}

// mountDir checks cfg and makes its mount point.
func mountDir(cfg Config) (string, error) {
	if cfg.Dir == "" || cfg.Name == "" || filepath.Base(cfg.Name) != cfg.Name {
		return "", fmt.Errorf("%w: fuse mount needs a directory and a plain file name, got %q and %q", replication.ErrInvalid, cfg.Dir, cfg.Name)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("fuse mount point: %w", err)
	}
	return dir, nil
}
