package replication

// FUSE frontend: serves one Device as one regular file in a FUSE mount, so
// that a loop device (losetup --direct-io=on) can turn it into a block
// device on hosts without the nbd module. docs/architecture.md, "Data path".
//
// The file system is two inodes, the root directory and the volume file,
// served through go-fuse's raw API: a one-file tree needs no inode
// bookkeeping, and the raw API hands every request straight to the Device
// without the fs package's per-node locks.
//
// Settings, as measured (docs/architecture.md, "FUSE settings"): the
// mount is made directly by this process (DirectMountStrict, no
// fusermount), requests carry up to
// 1 MiB (MaxWrite), up to 64 asynchronous requests are in flight
// (MaxBackground), CAP_ASYNC_DIO lets the loop device keep several direct
// I/O requests in flight, and the file is opened with FOPEN_DIRECT_IO |
// FOPEN_PARALLEL_DIRECT_WRITES so that no page cache sits between the loop
// device and the replicas and writes are not serialised on the inode lock.
//
// Durability: a FLUSH or FUA bio from the file system on the loop device
// becomes a vfs_fsync of this file in the loop driver, which the kernel
// sends here as FSYNC; FSYNC (and FLUSH, sent on every close) call
// Device.Flush, which returns only when every in-sync replica has fsynced.
// Writes are sent with fua=false: the kernel asks for durability with FSYNC.

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

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

const (
	fuseFileIno       = 2
	fuseMaxWrite      = 1 << 20
	fuseMaxBackground = 64
	fuseAttrTimeout   = time.Hour // nothing about the tree ever changes
	fuseBlockSize     = 4096
	// FUSEConnectionsDir is where the fusectl file system exposes each FUSE
	// connection's control files (abort, waiting).
	FUSEConnectionsDir = "/sys/fs/fuse/connections"
	// DefaultFUSEHungTimeout is how long the watchdog lets requests wait
	// with none completing, while the Device is not deliberately holding
	// them, before it aborts the connection. It must exceed the longest
	// stall the Device does not report as a hold: a replica timeout and the
	// drop that follows. Deliberate holds (HoldingDevice: an engine waiting
	// for the primary lease, for min_in_sync replicas, or for an in-sync
	// set change to be recorded) do not count towards it, however long.
	DefaultFUSEHungTimeout = 2 * time.Minute
)

var (
	// ErrFUSEBusy means the FUSE file is still in use (a loop device is
	// attached to it, or a process has it open), so it cannot be unmounted
	// cleanly.
	ErrFUSEBusy = errors.New("fuse file still in use")
	// ErrFUSEAborted means the FUSE connection was aborted (by the
	// watchdog, by Abort, or by Close after a failed unmount).
	ErrFUSEAborted = errors.New("fuse connection aborted")
)

// FUSEConfig configures MountFUSE.
type FUSEConfig struct {
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
	// DefaultFUSEHungTimeout; a negative value disables the watchdog.
	HungTimeout time.Duration
	Log         hclog.Logger
}

// FUSEMount is a mounted FUSE file serving a Device.
//
// Contract: methods are safe to call concurrently. Unmount and Close are
// idempotent. Teardown order when a loop device sits on the file: detach
// the loop device first, then Unmount (or Close).
type FUSEMount struct {
	dir, path string
	conn      uint32 // fusectl connection id (minor of the mount's st_dev)
	srv       *fuse.Server
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

// MountFUSE mounts a FUSE file system at cfg.Dir holding one file,
// cfg.Name, of dev.Size() bytes whose reads, writes, fsyncs and hole
// punches go to dev. It returns once the mount answers requests.
func MountFUSE(ctx context.Context, dev Device, cfg FUSEConfig) (*FUSEMount, error) {
	dir, err := fuseMountDir(cfg)
	if err != nil {
		return nil, err
	}
	m, fsys, opts := newFUSEMount(ctx, dev, cfg, dir)
	opts.DirectMountStrict = true
	srv, err := fuse.NewServer(fsys, dir, opts)
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

// newFUSEMount makes the file system over dev and the mount's state,
// before anything is mounted or served.
func newFUSEMount(ctx context.Context, dev Device, cfg FUSEConfig, dir string) (*FUSEMount, *fuseFS, *fuse.MountOptions) {
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.HungTimeout == 0 {
		cfg.HungTimeout = DefaultFUSEHungTimeout
	}
	lg := cfg.Log.Named("fuse").With("dir", dir, "file", cfg.Name)
	reqCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	fsys := &fuseFS{
		RawFileSystem: fuse.NewDefaultRawFileSystem(),
		dev:           dev,
		name:          cfg.Name,
		ctx:           reqCtx,
		log:           lg,
		uid:           uint32(os.Getuid()),
		gid:           uint32(os.Getgid()),
		mtime:         uint64(time.Now().Unix()),
	}
	opts := &fuse.MountOptions{
		MaxWrite:           fuseMaxWrite,
		MaxBackground:      fuseMaxBackground,
		ExtraCapabilities:  fuse.CAP_ASYNC_DIO,
		DisableReadDirPlus: true,
		DisableXAttrs:      true,
		FsName:             "saddlebag:" + cfg.Name,
		Name:               "saddlebag",
		Logger:             log.New(lg.StandardWriter(&hclog.StandardLoggerOptions{ForceLevel: hclog.Warn}), "", 0),
	}
	m := &FUSEMount{dir: dir, path: filepath.Join(dir, cfg.Name), fs: fsys, log: lg, cancel: cancel, hung: cfg.HungTimeout,
		done: make(chan struct{}), stop: make(chan struct{}), mounted: true}
	return m, fsys, opts
}

// Path is the volume file's path.
func (m *FUSEMount) Path() string { return m.path }

// Dir is the mount point.
func (m *FUSEMount) Dir() string { return m.dir }

// Connection is the FUSE connection id: the name of its directory under
// FUSEConnectionsDir.
func (m *FUSEMount) Connection() uint32 { return m.conn }

// Done is closed when the server has stopped: after Unmount or Close, or
// when the connection was aborted or the mount removed from outside.
func (m *FUSEMount) Done() <-chan struct{} { return m.done }

// Aborted reports whether the connection was aborted.
func (m *FUSEMount) Aborted() bool { return m.aborted.Load() }

// Unmount unmounts cleanly and waits for the server to stop. It fails with
// an error wrapping ErrFUSEBusy, changing nothing, while the file is in
// use: detach the loop device first.
func (m *FUSEMount) Unmount() error {
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
			return fmt.Errorf("unmount %s: %w: %w", m.dir, ErrFUSEBusy, err)
		}
		return fmt.Errorf("unmount %s: %w", m.dir, err)
	}
	m.finishLocked()
	m.log.Info("fuse file unmounted")
	return nil
}

// unmountServer unmounts and waits for the server loops.
func (m *FUSEMount) unmountServer() error {
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
func (m *FUSEMount) Close() error {
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
func (m *FUSEMount) Abort() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.abortLocked()
}

func (m *FUSEMount) abortLocked() error {
	if m.aborted.Swap(true) {
		return nil
	}
	m.log.Error("aborting fuse connection", "connection", m.conn)
	return AbortFUSEConnection(m.conn)
}

// finishLocked waits for the serve loop and watchdog. Callers hold mu.
func (m *FUSEMount) finishLocked() {
	m.stopped.Do(func() { close(m.stop) })
	m.wg.Wait()
	m.cancel()
	if m.relay != nil {
		m.relay.stop()
		m.relay.closeDev()
	}
	m.mounted = false
}

// watchdog aborts the connection when requests wait and none completes for
// timeout while the Device is not deliberately holding them: the server
// (or the Device under it) is hung. A Device that implements HoldingDevice
// and reports a hold (the engine waiting for the primary lease, for
// min_in_sync replicas, or for the in-sync set to be recorded) is left to
// hold for as long as it takes; the watchdog says so once, at warn, and
// keeps watching. It counts ticks rather than reading the clock so that the
// decision is deterministic.
func (m *FUSEMount) watchdog(timeout time.Duration) {
	const ticksPerTimeout = 8
	tick := time.NewTicker(timeout / ticksPerTimeout)
	defer tick.Stop()
	holding := func() (bool, string) { return false, "" }
	if h, ok := m.fs.dev.(HoldingDevice); ok {
		holding = h.Holding
	}
	st := stallTracker{limit: ticksPerTimeout}
	for {
		select {
		case <-m.stop:
			return
		case <-m.done:
			return
		case <-tick.C:
		}
		waiting := m.fs.inflight.Load()
		switch v, why := st.tick(waiting, m.fs.completed.Load(), holding); v {
		case stallHeld:
			m.log.Warn("fuse requests wait because the engine holds them; not aborting the connection",
				"reason", why, "waiting", waiting, "hung_timeout", timeout)
		case stallResumed:
			m.log.Info("held fuse requests complete again")
		case stallHung:
			m.log.Error("fuse requests made no progress: server hung, aborting the connection",
				"waiting", waiting, "timeout", timeout)
			if err := m.Abort(); err != nil {
				m.log.Error("abort hung fuse connection", "error", err)
			}
			return
		}
	}
}

// stallVerdict is what stallTracker.tick concluded.
type stallVerdict int

const (
	stallNone    stallVerdict = iota
	stallHeld                 // a stall began to be a deliberate hold: say so
	stallResumed              // requests complete again after a hold
	stallHung                 // limit ticks without progress or hold: abort
)

// stallTracker is the watchdog's decision, one tick at a time. A tick with
// requests waiting and none completed since the last one is a stalled
// tick; limit stalled ticks make a hung server. Ticks on which the Device
// holds deliberately do not count, but neither do they reset the count:
// only progress (a request completed) or no request waiting resets it. So
// a Device that is hung and reports a hold now and then is still aborted,
// after limit ticks on which it did not hold, rather than kept alive by
// each flicker of the hold.
type stallTracker struct {
	limit    int
	lastDone uint64
	stalled  int  // stalled ticks without a hold since the last progress
	held     bool // this stall was reported as a hold
}

// tick takes the number of requests waiting, the count of requests
// completed so far, and the Device's hold state, asked only when the
// requests are stalled. It returns the verdict, and with stallHeld the
// reason the Device gave.
func (s *stallTracker) tick(waiting int64, done uint64, holding func() (bool, string)) (stallVerdict, string) {
	if waiting == 0 || done != s.lastDone {
		s.lastDone, s.stalled = done, 0
		if s.held {
			s.held = false
			return stallResumed, ""
		}
		return stallNone, ""
	}
	if held, why := holding(); held {
		if !s.held {
			s.held = true
			return stallHeld, why
		}
		return stallNone, ""
	}
	if s.stalled++; s.stalled >= s.limit {
		return stallHung, ""
	}
	return stallNone, ""
}

// AbortFUSEConnection writes 1 to the abort file of FUSE connection id,
// mounting fusectl at FUSEConnectionsDir first if needed. Every pending
// and later request on the connection then fails; this is the only way to
// unblock I/O stuck on a hung FUSE server.
func AbortFUSEConnection(id uint32) error {
	abort := filepath.Join(FUSEConnectionsDir, strconv.FormatUint(uint64(id), 10), "abort")
	if _, err := os.Stat(abort); errors.Is(err, os.ErrNotExist) {
		if merr := unix.Mount("fusectl", FUSEConnectionsDir, "fusectl", 0, ""); merr != nil && !errors.Is(merr, unix.EBUSY) {
			return fmt.Errorf("mount fusectl at %s: %w", FUSEConnectionsDir, merr)
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

// fuseFS is the raw file system: root directory (inode 1) holding the
// volume file (inode 2). Unimplemented operations return ENOSYS through
// the embedded default.
type fuseFS struct {
	fuse.RawFileSystem
	dev      Device
	name     string
	ctx      context.Context // cancelled when the mount is torn down
	log      hclog.Logger
	uid, gid uint32
	mtime    uint64

	inflight     atomic.Int64  // data requests being served
	completed    atomic.Uint64 // data requests finished
	fencedLogged atomic.Bool
}

func (f *fuseFS) String() string { return "saddlebag:" + f.name }

func (f *fuseFS) fileAttr(a *fuse.Attr) {
	size := uint64(f.dev.Size())
	*a = fuse.Attr{Ino: fuseFileIno, Size: size, Blocks: size / 512, Mode: syscall.S_IFREG | 0o600, Nlink: 1,
		Atime: f.mtime, Mtime: f.mtime, Ctime: f.mtime, Blksize: fuseBlockSize}
	a.Uid, a.Gid = f.uid, f.gid
}

func (f *fuseFS) rootAttr(a *fuse.Attr) {
	*a = fuse.Attr{Ino: fuse.FUSE_ROOT_ID, Mode: syscall.S_IFDIR | 0o700, Nlink: 2,
		Atime: f.mtime, Mtime: f.mtime, Ctime: f.mtime, Blksize: fuseBlockSize}
	a.Uid, a.Gid = f.uid, f.gid
}

func (f *fuseFS) Lookup(_ <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if h.NodeId != fuse.FUSE_ROOT_ID || name != f.name {
		return fuse.ENOENT
	}
	*out = fuse.EntryOut{NodeId: fuseFileIno, Generation: 1}
	out.SetEntryTimeout(fuseAttrTimeout)
	out.SetAttrTimeout(fuseAttrTimeout)
	f.fileAttr(&out.Attr)
	return fuse.OK
}

func (f *fuseFS) Forget(uint64, uint64) {}

func (f *fuseFS) GetAttr(_ <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	switch in.NodeId {
	case fuse.FUSE_ROOT_ID:
		f.rootAttr(&out.Attr)
	case fuseFileIno:
		f.fileAttr(&out.Attr)
	default:
		return fuse.ENOENT
	}
	out.SetTimeout(fuseAttrTimeout)
	return fuse.OK
}

// SetAttr refuses to change the size (a volume's size is fixed; this also
// makes an O_TRUNC open fail instead of wiping nothing) and ignores mode,
// owner and time changes.
func (f *fuseFS) SetAttr(c <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	if in.NodeId == fuseFileIno && in.Valid&fuse.FATTR_SIZE != 0 && int64(in.Size) != f.dev.Size() {
		return fuse.EPERM
	}
	return f.GetAttr(c, &fuse.GetAttrIn{InHeader: in.InHeader}, out)
}

func (f *fuseFS) Access(<-chan struct{}, *fuse.AccessIn) fuse.Status { return fuse.OK }

func (f *fuseFS) Open(_ <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	switch in.NodeId {
	case fuseFileIno:
		out.OpenFlags = fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES
		return fuse.OK
	case fuse.FUSE_ROOT_ID:
		return fuse.Status(syscall.EISDIR)
	default:
		return fuse.ENOENT
	}
}

func (f *fuseFS) Release(<-chan struct{}, *fuse.ReleaseIn) {}

func (f *fuseFS) OpenDir(_ <-chan struct{}, in *fuse.OpenIn, _ *fuse.OpenOut) fuse.Status {
	if in.NodeId != fuse.FUSE_ROOT_ID {
		return fuse.ENOTDIR
	}
	return fuse.OK
}

func (f *fuseFS) ReadDir(_ <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	entries := []fuse.DirEntry{
		{Name: ".", Ino: fuse.FUSE_ROOT_ID, Mode: syscall.S_IFDIR, Off: 1},
		{Name: "..", Ino: fuse.FUSE_ROOT_ID, Mode: syscall.S_IFDIR, Off: 2},
		{Name: f.name, Ino: fuseFileIno, Mode: syscall.S_IFREG, Off: 3},
	}
	for _, e := range entries {
		if e.Off <= in.Offset {
			continue
		}
		if !out.AddDirEntry(e) {
			break
		}
	}
	return fuse.OK
}

func (f *fuseFS) ReleaseDir(*fuse.ReleaseIn) {}

func (f *fuseFS) StatFs(_ <-chan struct{}, _ *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	*out = fuse.StatfsOut{Blocks: uint64(f.dev.Size()) / fuseBlockSize, Files: 1, Bsize: fuseBlockSize,
		Frsize: fuseBlockSize, NameLen: 255}
	return fuse.OK
}

// begin counts a data request for the watchdog; the returned func ends it.
func (f *fuseFS) begin() func() {
	f.inflight.Add(1)
	return func() {
		f.completed.Add(1)
		f.inflight.Add(-1)
	}
}

func (f *fuseFS) Read(_ <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if in.NodeId != fuseFileIno {
		return nil, fuse.EBADF
	}
	defer f.begin()()
	size, off := f.dev.Size(), int64(in.Offset)
	if off >= size {
		return fuse.ReadResultData(nil), fuse.OK // end of file
	}
	n := min(int64(in.Size), size-off, int64(len(buf)))
	if err := f.dev.ReadAt(f.ctx, buf[:n], off); err != nil {
		return nil, f.status("read", off, n, err)
	}
	return fuse.ReadResultData(buf[:n]), fuse.OK
}

func (f *fuseFS) Write(_ <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	if in.NodeId != fuseFileIno {
		return 0, fuse.EBADF
	}
	defer f.begin()()
	off := int64(in.Offset)
	if off < 0 || off > f.dev.Size() || int64(len(data)) > f.dev.Size()-off {
		return 0, fuse.Status(syscall.EFBIG) // a volume file never grows
	}
	if err := f.dev.WriteAt(f.ctx, data, off, false); err != nil {
		return 0, f.status("write", off, int64(len(data)), err)
	}
	return uint32(len(data)), fuse.OK
}

// Writev joins a WRITE whose payload arrived in pieces (spliced requests).
func (f *fuseFS) Writev(c <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	if len(data) == 1 {
		return f.Write(c, in, data[0])
	}
	n := 0
	for _, d := range data {
		n += len(d)
	}
	buf := make([]byte, 0, n)
	for _, d := range data {
		buf = append(buf, d...)
	}
	return f.Write(c, in, buf)
}

// Fsync makes every completed write durable on every in-sync replica
// (datasync or not: the replicas fsync either way).
func (f *fuseFS) Fsync(_ <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	if in.NodeId != fuseFileIno {
		return fuse.OK
	}
	defer f.begin()()
	if err := f.dev.Flush(f.ctx); err != nil {
		return f.status("fsync", 0, 0, err)
	}
	return fuse.OK
}

// Flush is sent on every close(2) of the file: flushing there makes a
// close after writing durable, as closing a block device is.
func (f *fuseFS) Flush(_ <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	if in.NodeId != fuseFileIno {
		return fuse.OK
	}
	defer f.begin()()
	if err := f.dev.Flush(f.ctx); err != nil {
		return f.status("flush", 0, 0, err)
	}
	return fuse.OK
}

func (f *fuseFS) FsyncDir(<-chan struct{}, *fuse.FsyncIn) fuse.Status { return fuse.OK }

// Fallocate passes hole punches (the loop driver's DISCARD, and its
// WRITE_ZEROES without NOUNMAP) and zero-range requests (WRITE_ZEROES with
// NOUNMAP) to the Device as TRIM: a trimmed range reads back as zeroes. The
// replicas are sparse, so a zero range is not guaranteed to stay
// allocated. Plain preallocation is refused with EOPNOTSUPP rather than
// acknowledged, since nothing would be reserved.
func (f *fuseFS) Fallocate(_ <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	if in.NodeId != fuseFileIno {
		return fuse.EBADF
	}
	if in.Mode&(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_ZERO_RANGE) == 0 {
		return fuse.Status(syscall.EOPNOTSUPP)
	}
	defer f.begin()()
	size, off := f.dev.Size(), int64(in.Offset)
	if off >= size {
		return fuse.OK
	}
	n := min(int64(in.Length), size-off)
	if err := f.dev.Trim(f.ctx, off, n); err != nil {
		return f.status("trim", off, n, err)
	}
	return fuse.OK
}

// status maps a Device error to the errno the kernel passes up.
//
// ErrFenced maps to EIO, not ESHUTDOWN as NBD does: the caller here is the
// loop driver, which turns any errno but a handful (ENOSPC among them) into
// BLK_STS_IOERR anyway, and EIO is what read(2)/write(2)/fsync(2) callers
// and file systems treat as fatal: ext4 aborts its journal and goes
// read-only, so a fenced primary completes nothing. ErrNoSpace maps to
// ENOSPC (the loop driver keeps it as BLK_STS_NOSPC) and ErrOutOfRange to
// EINVAL.
func (f *fuseFS) status(op string, off, n int64, err error) fuse.Status {
	var st fuse.Status
	switch {
	case errors.Is(err, ErrNoSpace):
		st = fuse.Status(syscall.ENOSPC)
	case errors.Is(err, ErrOutOfRange):
		st = fuse.EINVAL
	default:
		st = fuse.EIO
	}
	switch {
	case f.ctx.Err() != nil:
		f.log.Debug("fuse request failed during shutdown", "op", op, "error", err)
	case errors.Is(err, ErrFenced) && f.fencedLogged.Swap(true):
		f.log.Debug("fuse request failed", "op", op, "error", err)
	default:
		f.log.Error("fuse request failed", "op", op, "offset", off, "length", n, "errno", st, "error", err)
	}
	return st
}

var _ fuse.RawFileSystem = (*fuseFS)(nil)
