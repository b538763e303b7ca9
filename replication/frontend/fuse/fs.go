package fuse

// The file system go-fuse serves: two inodes, the root directory and the
// volume file, whose data requests go straight to the Device.

import (
	"context"
	"errors"
	"sync/atomic"
	"syscall"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/replication"
)

// fuseFS is the raw file system: root directory (inode 1) holding the
// volume file (inode 2). Unimplemented operations return ENOSYS through
// the embedded default.
type fuseFS struct {
	gofuse.RawFileSystem
	dev      replication.Device
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

func (f *fuseFS) fileAttr(a *gofuse.Attr) {
	size := uint64(f.dev.Size())
	*a = gofuse.Attr{Ino: fuseFileIno, Size: size, Blocks: size / 512, Mode: syscall.S_IFREG | 0o600, Nlink: 1,
		Atime: f.mtime, Mtime: f.mtime, Ctime: f.mtime, Blksize: fuseBlockSize}
	a.Uid, a.Gid = f.uid, f.gid
}

func (f *fuseFS) rootAttr(a *gofuse.Attr) {
	*a = gofuse.Attr{Ino: gofuse.FUSE_ROOT_ID, Mode: syscall.S_IFDIR | 0o700, Nlink: 2,
		Atime: f.mtime, Mtime: f.mtime, Ctime: f.mtime, Blksize: fuseBlockSize}
	a.Uid, a.Gid = f.uid, f.gid
}

func (f *fuseFS) Lookup(_ <-chan struct{}, h *gofuse.InHeader, name string, out *gofuse.EntryOut) gofuse.Status {
	if h.NodeId != gofuse.FUSE_ROOT_ID || name != f.name {
		return gofuse.ENOENT
	}
	*out = gofuse.EntryOut{NodeId: fuseFileIno, Generation: 1}
	out.SetEntryTimeout(fuseAttrTimeout)
	out.SetAttrTimeout(fuseAttrTimeout)
	f.fileAttr(&out.Attr)
	return gofuse.OK
}

func (f *fuseFS) Forget(uint64, uint64) {}

func (f *fuseFS) GetAttr(_ <-chan struct{}, in *gofuse.GetAttrIn, out *gofuse.AttrOut) gofuse.Status {
	switch in.NodeId {
	case gofuse.FUSE_ROOT_ID:
		f.rootAttr(&out.Attr)
	case fuseFileIno:
		f.fileAttr(&out.Attr)
	default:
		return gofuse.ENOENT
	}
	out.SetTimeout(fuseAttrTimeout)
	return gofuse.OK
}

// SetAttr refuses to change the size (a volume's size is fixed; this also
// makes an O_TRUNC open fail instead of wiping nothing) and ignores mode,
// owner and time changes.
func (f *fuseFS) SetAttr(c <-chan struct{}, in *gofuse.SetAttrIn, out *gofuse.AttrOut) gofuse.Status {
	if in.NodeId == fuseFileIno && in.Valid&gofuse.FATTR_SIZE != 0 && int64(in.Size) != f.dev.Size() {
		return gofuse.EPERM
	}
	return f.GetAttr(c, &gofuse.GetAttrIn{InHeader: in.InHeader}, out)
}

func (f *fuseFS) Access(<-chan struct{}, *gofuse.AccessIn) gofuse.Status { return gofuse.OK }

func (f *fuseFS) Open(_ <-chan struct{}, in *gofuse.OpenIn, out *gofuse.OpenOut) gofuse.Status {
	switch in.NodeId {
	case fuseFileIno:
		out.OpenFlags = gofuse.FOPEN_DIRECT_IO | gofuse.FOPEN_PARALLEL_DIRECT_WRITES
		return gofuse.OK
	case gofuse.FUSE_ROOT_ID:
		return gofuse.Status(syscall.EISDIR)
	default:
		return gofuse.ENOENT
	}
}

func (f *fuseFS) Release(<-chan struct{}, *gofuse.ReleaseIn) {}

func (f *fuseFS) OpenDir(_ <-chan struct{}, in *gofuse.OpenIn, _ *gofuse.OpenOut) gofuse.Status {
	if in.NodeId != gofuse.FUSE_ROOT_ID {
		return gofuse.ENOTDIR
	}
	return gofuse.OK
}

func (f *fuseFS) ReadDir(_ <-chan struct{}, in *gofuse.ReadIn, out *gofuse.DirEntryList) gofuse.Status {
	entries := []gofuse.DirEntry{
		{Name: ".", Ino: gofuse.FUSE_ROOT_ID, Mode: syscall.S_IFDIR, Off: 1},
		{Name: "..", Ino: gofuse.FUSE_ROOT_ID, Mode: syscall.S_IFDIR, Off: 2},
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
	return gofuse.OK
}

func (f *fuseFS) ReleaseDir(*gofuse.ReleaseIn) {}

func (f *fuseFS) StatFs(_ <-chan struct{}, _ *gofuse.InHeader, out *gofuse.StatfsOut) gofuse.Status {
	*out = gofuse.StatfsOut{Blocks: uint64(f.dev.Size()) / fuseBlockSize, Files: 1, Bsize: fuseBlockSize,
		Frsize: fuseBlockSize, NameLen: 255}
	return gofuse.OK
}

// begin counts a data request for the watchdog; the returned func ends it.
func (f *fuseFS) begin() func() {
	f.inflight.Add(1)
	return func() {
		f.completed.Add(1)
		f.inflight.Add(-1)
	}
}

func (f *fuseFS) Read(_ <-chan struct{}, in *gofuse.ReadIn, buf []byte) (gofuse.ReadResult, gofuse.Status) {
	if in.NodeId != fuseFileIno {
		return nil, gofuse.EBADF
	}
	defer f.begin()()
	size, off := f.dev.Size(), int64(in.Offset)
	if off >= size {
		return gofuse.ReadResultData(nil), gofuse.OK // end of file
	}
	n := min(int64(in.Size), size-off, int64(len(buf)))
	if err := f.dev.ReadAt(f.ctx, buf[:n], off); err != nil {
		return nil, f.status("read", off, n, err)
	}
	return gofuse.ReadResultData(buf[:n]), gofuse.OK
}

func (f *fuseFS) Write(_ <-chan struct{}, in *gofuse.WriteIn, data []byte) (uint32, gofuse.Status) {
	if in.NodeId != fuseFileIno {
		return 0, gofuse.EBADF
	}
	defer f.begin()()
	off := int64(in.Offset)
	if off < 0 || off > f.dev.Size() || int64(len(data)) > f.dev.Size()-off {
		return 0, gofuse.Status(syscall.EFBIG) // a volume file never grows
	}
	if err := f.dev.WriteAt(f.ctx, data, off, false); err != nil {
		return 0, f.status("write", off, int64(len(data)), err)
	}
	return uint32(len(data)), gofuse.OK
}

// Writev joins a WRITE whose payload arrived in pieces (spliced requests).
func (f *fuseFS) Writev(c <-chan struct{}, in *gofuse.WriteIn, data [][]byte) (uint32, gofuse.Status) {
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
func (f *fuseFS) Fsync(_ <-chan struct{}, in *gofuse.FsyncIn) gofuse.Status {
	if in.NodeId != fuseFileIno {
		return gofuse.OK
	}
	defer f.begin()()
	if err := f.dev.Flush(f.ctx); err != nil {
		return f.status("fsync", 0, 0, err)
	}
	return gofuse.OK
}

// Flush is sent on every close(2) of the file: flushing there makes a
// close after writing durable, as closing a block device is.
func (f *fuseFS) Flush(_ <-chan struct{}, in *gofuse.FlushIn) gofuse.Status {
	if in.NodeId != fuseFileIno {
		return gofuse.OK
	}
	defer f.begin()()
	if err := f.dev.Flush(f.ctx); err != nil {
		return f.status("flush", 0, 0, err)
	}
	return gofuse.OK
}

func (f *fuseFS) FsyncDir(<-chan struct{}, *gofuse.FsyncIn) gofuse.Status { return gofuse.OK }

// Fallocate passes hole punches (the loop driver's DISCARD, and its
// WRITE_ZEROES without NOUNMAP) and zero-range requests (WRITE_ZEROES with
// NOUNMAP) to the Device as TRIM: a trimmed range reads back as zeroes. The
// replicas are sparse, so a zero range is not guaranteed to stay
// allocated. Plain preallocation is refused with EOPNOTSUPP rather than
// acknowledged, since nothing would be reserved.
func (f *fuseFS) Fallocate(_ <-chan struct{}, in *gofuse.FallocateIn) gofuse.Status {
	if in.NodeId != fuseFileIno {
		return gofuse.EBADF
	}
	if in.Mode&(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_ZERO_RANGE) == 0 {
		return gofuse.Status(syscall.EOPNOTSUPP)
	}
	defer f.begin()()
	size, off := f.dev.Size(), int64(in.Offset)
	if off >= size {
		return gofuse.OK
	}
	n := min(int64(in.Length), size-off)
	if err := f.dev.Trim(f.ctx, off, n); err != nil {
		return f.status("trim", off, n, err)
	}
	return gofuse.OK
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
func (f *fuseFS) status(op string, off, n int64, err error) gofuse.Status {
	var st gofuse.Status
	switch {
	case errors.Is(err, replication.ErrNoSpace):
		st = gofuse.Status(syscall.ENOSPC)
	case errors.Is(err, replication.ErrOutOfRange):
		st = gofuse.EINVAL
	default:
		st = gofuse.EIO
	}
	switch {
	case f.ctx.Err() != nil:
		f.log.Debug("fuse request failed during shutdown", "op", op, "error", err)
	case errors.Is(err, replication.ErrFenced) && f.fencedLogged.Swap(true):
		f.log.Debug("fuse request failed", "op", op, "error", err)
	default:
		f.log.Error("fuse request failed", "op", op, "offset", off, "length", n, "errno", st, "error", err)
	}
	return st
}

var _ gofuse.RawFileSystem = (*fuseFS)(nil)
