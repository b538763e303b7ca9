// Package crashfs is the fault simulator's disk (replication/sim): an
// in-memory replica.FileSystem (the Store's seam, OpenStoreWith)
// that remembers every block written or punched since each file's last
// sync, so that a simulated power loss leaves exactly what a real one
// may, and that a simulated SIGKILL, full disk or power cut on a chosen
// write can hit.
//
// It imports, of Saddlebag's packages, only replication/replica (the
// FileSystem and File interfaces) and replication/wire (the block size);
// only replication/sim imports it.
package crashfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/saddlebag/saddlebag/replication/replica"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// blockSize is the crash layer's unit: what a power loss keeps or loses.
const blockSize = wire.BlockSize

// ErrKilled is what a file handle of a killed replica process returns.
var ErrKilled = errors.New("replica process killed")

// FS is an in-memory replica.FileSystem that remembers, per file,
// the last synced (durable) content and every block written or punched
// since, in order. Kill invalidates every open handle (a SIGKILL: the page
// cache, and so every completed write, survives); PowerLoss also reverts
// each file to its durable content and re-applies a random subset of the
// unsynced block writes in their original order, which yields exactly the
// states a file system that writes back whole 4 KiB pages in any order can
// leave: per block, the synced version or any later one.
//
// Simplifications, documented in replication/sim/doc.go: the namespace (create, remove,
// truncate) is durable at once, as if every such change were followed by
// a directory sync, which the store does anyway.
//
// A quota (SetQuota) makes writes that need new blocks fail with ENOSPC.
type FS struct {
	mu    sync.Mutex
	files map[string]*memFile
	gen   uint64 // handles of an older generation belong to a killed process
	quota int64  // allocated bytes allowed; 0: unlimited
	used  int64  // allocated bytes, over every file
	trap  *trap  // a power cut armed on a write
	down  bool   // a trap cut the power: nothing opens until Up
}

// trap cuts the power right after the nth write to a file whose name
// contains match: the write reached the page cache, its sync never came.
type trap struct {
	match  string
	n      int
	r      *rand.Rand
	atCut  func()         // called at the cut, under the FS's lock
	onFire func(lost int) // called on its own goroutine
}

type memFile struct {
	size    int64
	cur     map[int64][]byte // block index -> content (never mutated in place)
	durable map[int64][]byte
	pending []pendingWrite // block changes since the last sync, in order
}

type pendingWrite struct {
	blk  int64
	data []byte // nil: a hole
}

// New returns an empty file system.
func New() *FS { return &FS{files: map[string]*memFile{}} }

var _ replica.FileSystem = (*FS)(nil)

// OpenFile implements replica.FileSystem.
func (c *FS) OpenFile(name string, flag int, _ fs.FileMode) (replica.File, error) {
	name = filepath.Clean(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.files[name]
	switch {
	case c.down:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fmt.Errorf("%w: %w", ErrKilled, syscall.EIO)}
	case ok && flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrExist}
	case !ok && flag&os.O_CREATE == 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	case !ok:
		f = &memFile{cur: map[int64][]byte{}, durable: map[int64][]byte{}}
		c.files[name] = f
	}
	h := &memHandle{c: c, f: f, name: name, gen: c.gen}
	if ok && flag&os.O_TRUNC != 0 {
		c.truncateLocked(f, 0) // durable at once, as Truncate
	}
	return h, nil
}

// Up turns the host back on after a power cut a trap fired: until then
// no file opens, as its replica server, still running in this process,
// must not serve what the cut left as if the host were up.
func (c *FS) Up() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down = false
}

// MkdirAll implements replica.FileSystem: directories are implicit.
func (c *FS) MkdirAll(string, fs.FileMode) error { return nil }

// Remove implements replica.FileSystem.
func (c *FS) Remove(name string) error {
	name = filepath.Clean(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.files[name]
	if !ok {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	c.used -= int64(len(f.cur)) * blockSize
	delete(c.files, name)
	return nil
}

// RemoveAll implements replica.FileSystem.
func (c *FS) RemoveAll(path string) error {
	path = filepath.Clean(path)
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, f := range c.files {
		if name == path || strings.HasPrefix(name, path+"/") {
			c.used -= int64(len(f.cur)) * blockSize
			delete(c.files, name)
		}
	}
	return nil
}

// SyncDir implements replica.FileSystem: the namespace is always durable.
func (c *FS) SyncDir(string) error { return nil }

// SetQuota limits the allocated bytes; 0 lifts the limit. Used beyond a
// new quota stays; only new allocations fail.
func (c *FS) SetQuota(bytes int64) {
	c.mu.Lock()
	c.quota = bytes
	c.mu.Unlock()
}

// Used returns the allocated bytes.
func (c *FS) Used() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}

// Kill makes every open handle fail from now on, as when the process
// holding them is killed. Content is kept.
func (c *FS) Kill() {
	c.mu.Lock()
	c.gen++
	c.mu.Unlock()
}

// ArmPowerLoss makes the nth write (from now) to a file whose name
// contains match cut the power (PowerLoss with draws from r) once it has
// reached the page cache; that write fails, as its process dies. onFire
// then runs on a goroutine of its own with the number of block writes
// lost; atCut, if not nil, runs at the cut itself, before the write
// returns (it must not use the FS). A new ArmPowerLoss replaces an
// unfired one.
func (c *FS) ArmPowerLoss(match string, n int, r *rand.Rand, atCut func(), onFire func(lost int)) {
	c.mu.Lock()
	c.trap = &trap{match: match, n: n, r: r, atCut: atCut, onFire: onFire}
	c.mu.Unlock()
}

// Disarm removes an unfired trap.
func (c *FS) Disarm() {
	c.mu.Lock()
	c.trap = nil
	c.mu.Unlock()
}

// PowerLoss kills, then leaves each file as a power cut would: its synced
// content plus a random subset (drawn from r) of the later block writes,
// applied in order. It returns how many unsynced block writes were lost.
func (c *FS) PowerLoss(r *rand.Rand) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.powerLossLocked(r)
}

func (c *FS) powerLossLocked(r *rand.Rand) int {
	c.gen++
	lost := 0
	names := make([]string, 0, len(c.files))
	for name := range c.files {
		names = append(names, name)
	}
	slices.Sort(names) // the same draws for the same seed
	c.used = 0
	for _, name := range names {
		f := c.files[name]
		next := make(map[int64][]byte, len(f.durable))
		for b, d := range f.durable {
			next[b] = d
		}
		for _, w := range f.pending {
			if r.IntN(2) == 0 {
				lost++
				continue
			}
			if w.data == nil {
				delete(next, w.blk)
			} else {
				next[w.blk] = w.data
			}
		}
		f.cur, f.durable, f.pending = next, maps(next), nil
		c.used += int64(len(f.cur)) * blockSize
	}
	return lost
}

func maps(m map[int64][]byte) map[int64][]byte {
	out := make(map[int64][]byte, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Wipe removes every file under dir, durably (a new, empty disk).
func (c *FS) Wipe(dir string) { _ = c.RemoveAll(dir) }

// ReadFile returns the current content of name (what a reader would see).
func (c *FS) ReadFile(name string) ([]byte, error) {
	name = filepath.Clean(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.files[name]
	if !ok {
		return nil, &fs.PathError{Op: "read", Path: name, Err: fs.ErrNotExist}
	}
	out := make([]byte, f.size)
	for b, d := range f.cur {
		if off := b * blockSize; off < f.size {
			copy(out[off:], d)
		}
	}
	return out, nil
}

// memHandle is one open file of one process generation.
type memHandle struct {
	c    *FS
	f    *memFile
	name string
	gen  uint64
}

// lock takes the file system lock and checks the handle is still alive.
func (h *memHandle) lock(op string) error {
	h.c.mu.Lock()
	if h.gen != h.c.gen {
		h.c.mu.Unlock()
		return &fs.PathError{Op: op, Path: h.name, Err: fmt.Errorf("%w: %w", ErrKilled, syscall.EIO)}
	}
	return nil
}

func (h *memHandle) Name() string { return h.name }

func (h *memHandle) ReadAt(p []byte, off int64) (int, error) {
	if err := h.lock("read"); err != nil {
		return 0, err
	}
	defer h.c.mu.Unlock()
	f := h.f
	if off >= f.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > f.size-off {
		n = int(f.size - off)
	}
	for i := 0; i < n; {
		pos := off + int64(i)
		b, in := pos/blockSize, int(pos%blockSize)
		k := min(n-i, blockSize-in)
		if d, ok := f.cur[b]; ok {
			copy(p[i:i+k], d[in:])
		} else {
			clear(p[i : i+k])
		}
		i += k
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// setBlock installs a new version of block b (nil: a hole), charging the
// quota for a newly allocated block.
func (h *memHandle) setBlock(b int64, d []byte) error {
	f, c := h.f, h.c
	_, had := f.cur[b]
	if d == nil {
		if had {
			delete(f.cur, b)
			c.used -= blockSize
			f.pending = append(f.pending, pendingWrite{blk: b})
		}
		return nil
	}
	if !had {
		if c.quota > 0 && c.used+blockSize > c.quota {
			return syscall.ENOSPC
		}
		c.used += blockSize
	}
	f.cur[b] = d
	f.pending = append(f.pending, pendingWrite{blk: b, data: d})
	return nil
}

func (h *memHandle) WriteAt(p []byte, off int64) (int, error) {
	if err := h.lock("write"); err != nil {
		return 0, err
	}
	defer h.c.mu.Unlock()
	f := h.f
	for i := 0; i < len(p); {
		pos := off + int64(i)
		b, in := pos/blockSize, int(pos%blockSize)
		k := min(len(p)-i, blockSize-in)
		d := make([]byte, blockSize)
		if old, ok := f.cur[b]; ok && k < blockSize {
			copy(d, old)
		}
		copy(d[in:], p[i:i+k])
		if err := h.setBlock(b, d); err != nil {
			return i, &fs.PathError{Op: "write", Path: h.name, Err: err}
		}
		i += k
		f.size = max(f.size, pos+int64(k))
	}
	if t := h.c.trap; t != nil && strings.Contains(h.name, t.match) {
		if t.n--; t.n <= 0 {
			h.c.trap = nil
			h.c.down = true // the host is off until the node restarts (Up)
			if t.atCut != nil {
				t.atCut()
			}
			lost := h.c.powerLossLocked(t.r)
			go t.onFire(lost)
			return len(p), &fs.PathError{Op: "write", Path: h.name, Err: fmt.Errorf("%w: %w", ErrKilled, syscall.EIO)}
		}
	}
	return len(p), nil
}

func (h *memHandle) sync() error {
	if err := h.lock("sync"); err != nil {
		return err
	}
	defer h.c.mu.Unlock()
	f := h.f
	for _, w := range f.pending {
		if w.data == nil {
			delete(f.durable, w.blk)
		} else {
			f.durable[w.blk] = w.data
		}
	}
	f.pending = nil
	return nil
}

func (h *memHandle) Sync() error     { return h.sync() }
func (h *memHandle) Datasync() error { return h.sync() }

func (h *memHandle) PunchHole(off, n int64) error {
	if err := h.lock("punch"); err != nil {
		return err
	}
	defer h.c.mu.Unlock()
	f := h.f
	end := min(off+n, f.size)
	for pos := off; pos < end; {
		b, in := pos/blockSize, pos%blockSize
		k := min(end-pos, blockSize-in)
		if k == blockSize {
			_ = h.setBlock(b, nil)
		} else if old, ok := f.cur[b]; ok {
			d := slices.Clone(old)
			clear(d[in : in+k])
			_ = h.setBlock(b, d) // already allocated: cannot fail
		}
		pos += k
	}
	return nil
}

func (h *memHandle) SeekData(off int64) (int64, error) {
	if err := h.lock("seek"); err != nil {
		return 0, err
	}
	defer h.c.mu.Unlock()
	f := h.f
	for b := off / blockSize; b*blockSize < f.size; b++ {
		if _, ok := f.cur[b]; ok {
			return max(off, b*blockSize), nil
		}
	}
	return 0, syscall.ENXIO
}

func (h *memHandle) SeekHole(off int64) (int64, error) {
	if err := h.lock("seek"); err != nil {
		return 0, err
	}
	defer h.c.mu.Unlock()
	f := h.f
	if off >= f.size {
		return 0, syscall.ENXIO
	}
	b := off / blockSize
	for ; b*blockSize < f.size; b++ {
		if _, ok := f.cur[b]; !ok {
			break
		}
	}
	return min(max(off, b*blockSize), f.size), nil
}

func (h *memHandle) Truncate(size int64) error {
	if err := h.lock("truncate"); err != nil {
		return err
	}
	defer h.c.mu.Unlock()
	h.c.truncateLocked(h.f, size)
	return nil
}

func (c *FS) truncateLocked(f *memFile, size int64) {
	for b := range f.cur {
		if b*blockSize >= size {
			delete(f.cur, b)
			delete(f.durable, b)
			c.used -= blockSize
		}
	}
	f.pending = slices.DeleteFunc(f.pending, func(w pendingWrite) bool { return w.blk*blockSize >= size })
	f.size = size
}

func (h *memHandle) Close() error {
	if err := h.lock("close"); err != nil {
		return err
	}
	h.c.mu.Unlock()
	return nil
}
