package replica

import (
	"fmt"
	"io/fs"
	"os"

	"github.com/hashicorp/go-hclog"

	"golang.org/x/sys/unix"
)

// File is what a Store needs of one of its files (the volume data file,
// the metadata and peer-bitmap slot files). The default is a real
// *os.File; a test can open the files through a FileSystem that records
// every write and sync, to simulate a power loss (replication/sim).
type File interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Sync makes the file's data and metadata durable (fsync).
	Sync() error
	// Datasync makes the file's data durable (fdatasync).
	Datasync() error
	// PunchHole deallocates [off, off+n) without changing the size:
	// the range reads back as zeroes.
	PunchHole(off, n int64) error
	// SeekData and SeekHole are lseek(2) with SEEK_DATA and SEEK_HOLE;
	// past the last data SeekData fails with unix.ENXIO.
	SeekData(off int64) (int64, error)
	SeekHole(off int64) (int64, error)
	Truncate(size int64) error
	Close() error
	Name() string
}

// FileSystem opens a Store's files and changes its directories.
type FileSystem interface {
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	MkdirAll(path string, perm fs.FileMode) error
	Remove(name string) error
	RemoveAll(path string) error
	// SyncDir makes the entries of directory dir durable.
	SyncDir(dir string) error
}

// StoreOptions are the optional settings of OpenStoreWith.
type StoreOptions struct {
	// Files opens the store's files; nil means the real file system.
	Files FileSystem
	// BootID stands for the host's boot id ("": the kernel's). A
	// simulated power loss restarts a replica with a new one, as a real
	// one would come back.
	BootID string
}

// OpenStoreWith is OpenStore with options.
func OpenStoreWith(dir string, log hclog.Logger, opts StoreOptions) (*Store, error) {
	fsys := opts.Files
	if fsys == nil {
		fsys = OSFS{}
	}
	if err := fsys.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open data dir: %w", err)
	}
	boot := opts.BootID
	if boot == "" {
		boot = hostBootID()
	}
	return &Store{dir: dir, log: log.Named("store"), fs: fsys, open: map[string]*Volume{}, bootID: boot}, nil
}

// OSFS is the real file system: what StoreOptions.Files nil means, and
// what a FileSystem that changes a few of its calls (a test's) embeds.
type OSFS struct{}

func (OSFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (OSFS) MkdirAll(path string, perm fs.FileMode) error { return os.MkdirAll(path, perm) }
func (OSFS) Remove(name string) error                     { return os.Remove(name) }
func (OSFS) RemoveAll(path string) error                  { return os.RemoveAll(path) }

func (OSFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// osFile is a real file.
type osFile struct{ *os.File }

func (f osFile) Datasync() error { return unix.Fdatasync(int(f.Fd())) }

func (f osFile) PunchHole(off, n int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (f osFile) SeekData(off int64) (int64, error) {
	return unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
}
func (f osFile) SeekHole(off int64) (int64, error) {
	return unix.Seek(int(f.Fd()), off, unix.SEEK_HOLE)
}
