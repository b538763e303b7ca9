package replica

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// Store holds the replicas kept under one data directory: one folder per
// volume with a sparse data file and a metadata file.
//
// Store is safe for concurrent use. A replica opened several times (for
// example by a reconnecting primary) is shared and closed with its last user.
type Store struct {
	dir    string
	log    hclog.Logger
	fs     FileSystem
	bootID string // the host's boot id (see wire.OpenReply.BootID)

	mu   sync.Mutex
	open map[string]*Volume
}

// OpenStore opens (creating if needed) the data directory dir.
func OpenStore(dir string, log hclog.Logger) (*Store, error) {
	return OpenStoreWith(dir, log, StoreOptions{})
}

// hostBootID returns the kernel's boot id, which changes at every boot;
// "" when unreadable (a primary then assumes every restart was a reboot).
func hostBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Dir returns the store's data directory.
func (s *Store) Dir() string { return s.dir }

// DataPath returns the path of volume id's data file.
func (s *Store) DataPath(id string) string { return filepath.Join(s.dir, id, "data") }

func (s *Store) metaPath(id string) string { return filepath.Join(s.dir, id, "meta") }

// Open returns the replica of volume id. If none exists and create is true,
// it creates an empty one of the given size; otherwise it fails with
// wire.ErrVolumeNotFound. An existing replica must have the given size.
// created reports whether this call created it. Call Volume.Close when done.
func (s *Store) Open(id string, size int64, create bool) (v *Volume, created bool, err error) {
	if err := wire.ValidateVolumeID(id); err != nil {
		return nil, false, err
	}
	if err := wire.ValidateSize(size); err != nil {
		return nil, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.open[id]; ok {
		if v.size != size {
			return nil, false, fmt.Errorf("%w: volume %s has size %d, not %d", wire.ErrInvalid, id, v.size, size)
		}
		v.refs++
		return v, false, nil
	}
	v, created, err = s.openVolume(id, size, create)
	if err != nil {
		return nil, false, err
	}
	s.open[id] = v
	return v, created, nil
}

func (s *Store) openVolume(id string, size int64, create bool) (*Volume, bool, error) {
	mf, err := openMeta(s.fs, s.metaPath(id))
	created := false
	switch {
	case errors.Is(err, fs.ErrNotExist) && create:
		if err := s.fs.MkdirAll(filepath.Join(s.dir, id), 0o700); err != nil {
			return nil, false, err
		}
		// The data file first: a crash before the metadata exists leaves a
		// folder that the next create completes.
		df, err := s.fs.OpenFile(s.DataPath(id), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, false, err
		}
		if err := df.Truncate(size); err != nil {
			df.Close()
			return nil, false, classifyIOError(fmt.Errorf("size data file: %w", err))
		}
		if err := df.Sync(); err != nil {
			df.Close()
			return nil, false, err
		}
		df.Close()
		if mf, err = createMeta(s.fs, s.metaPath(id), Meta{VolumeID: id, Size: size, Clean: true, Incarnation: wire.NewID()}); err != nil {
			return nil, false, classifyIOError(fmt.Errorf("create metadata: %w", err))
		}
		if err := s.fs.SyncDir(filepath.Join(s.dir, id)); err != nil {
			mf.close()
			return nil, false, err
		}
		created = true
		s.log.Info("created replica", "volume_id", id, "size", size)
	case errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("%w: %s", wire.ErrVolumeNotFound, id)
	case err != nil:
		return nil, false, err
	}
	m := mf.cur
	if m.VolumeID != id || m.Size != size {
		mf.close()
		return nil, false, fmt.Errorf("%w: replica %s holds volume %q of size %d, asked for size %d", wire.ErrInvalid, id, m.VolumeID, m.Size, size)
	}
	df, err := s.fs.OpenFile(s.DataPath(id), os.O_RDWR, 0)
	if err != nil {
		mf.close()
		return nil, false, err
	}
	wasClean := m.Clean
	if m.Clean {
		m.Clean = false
		if err := mf.store(m); err != nil {
			mf.close()
			df.Close()
			return nil, false, classifyIOError(err)
		}
	}
	return &Volume{store: s, id: id, size: size, data: df, meta: mf, wasClean: wasClean, refs: 1}, created, nil
}

// Delete removes the replica of volume id. It fails if the replica is open.
// Deleting an absent replica succeeds.
func (s *Store) Delete(id string) error {
	if err := wire.ValidateVolumeID(id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.open[id]; ok {
		return fmt.Errorf("%w: replica %s is open", wire.ErrReplicaBusy, id)
	}
	return s.fs.RemoveAll(filepath.Join(s.dir, id))
}

// classifyIOError wraps a full-disk error in wire.ErrNoSpace so callers can tell.
func classifyIOError(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", wire.ErrNoSpace, err)
	}
	return err
}

// Volume is one open replica. Every operation carries the epoch of the
// primary that sent it and is refused with wire.ErrStaleEpoch when that epoch is
// lower than the highest one promised. The check and the operation happen
// under one lock that Promise takes exclusively, so once Promise(e) has
// returned no operation with an epoch below e is applied.
//
// Volume is safe for concurrent use.
type Volume struct {
	store    *Store
	id       string
	size     int64
	data     File
	wasClean bool

	mu     sync.RWMutex // held shared by I/O, exclusively by epoch changes
	meta   *metaFile
	peerMu sync.Mutex // serialises peer bitmap files
	refs   int        // guarded by store.mu

	// connMu is held shared while a connection's request is applied and
	// exclusively by a promise, which makes session the number of the
	// newest promising connection (see Server: a request of an older one
	// is refused with wire.ErrSuperseded).
	connMu  sync.RWMutex
	session uint64
	// used: a connection sent a request after its promise, so its primary
	// read the state (Clean among it) the promise replied. Only then may
	// Close mark a replica that was opened unclean as clean again.
	used atomic.Bool
}

// PromiseSession is PromiseOwned for a connection: it returns the
// connection's session number, newer than every earlier connection's,
// which enter then checks.
func (v *Volume) PromiseSession(epoch, owner uint64) (uint64, error) {
	v.connMu.Lock()
	defer v.connMu.Unlock()
	if err := v.PromiseOwned(epoch, owner); err != nil {
		return 0, err
	}
	v.session++
	return v.session, nil
}

// enter admits one request at epoch of the connection with session
// number session (0: a connection that never promised, checked by epoch
// alone) and returns the function that ends it. Once a newer connection
// has promised, requests of older ones fail: with wire.ErrStaleEpoch when
// their epoch is below the promise (a newer primary fences them), else
// with wire.ErrSuperseded.
func (v *Volume) enter(session, epoch uint64) (func(), error) {
	v.connMu.RLock()
	if session == 0 || session == v.session {
		if session != 0 {
			v.used.Store(true)
		}
		return v.connMu.RUnlock, nil
	}
	v.connMu.RUnlock()
	v.mu.RLock()
	promised := v.meta.cur.Epoch
	v.mu.RUnlock()
	if epoch < promised {
		return nil, fmt.Errorf("%w: epoch %d is below promised epoch %d", wire.ErrStaleEpoch, epoch, promised)
	}
	return nil, fmt.Errorf("%w: volume %s", wire.ErrSuperseded, v.id)
}

// ID returns the volume id.
func (v *Volume) ID() string { return v.id }

// Size returns the volume size in bytes.
func (v *Volume) Size() int64 { return v.size }

// Meta returns a copy of the current metadata.
func (v *Volume) Meta() Meta {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.meta.cur
}

// WasClean reports whether the replica had been shut down cleanly before
// this open; false means the process holding it last crashed.
func (v *Volume) WasClean() bool { return v.wasClean }

// Promise records that the replica will refuse any frame with an epoch
// below epoch. A lower epoch than the one already promised is refused.
func (v *Volume) Promise(epoch uint64) error { return v.PromiseOwned(epoch, 0) }

// PromiseOwned is Promise by the primary owner (a random number each
// engine draws; 0: anonymous). The same epoch promised again by another
// owner is refused like a lower one: two primaries at one epoch (Consul's
// lock index restarted) must not both be accepted, and the second learns
// it must start above.
func (v *Volume) PromiseOwned(epoch, owner uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.promiseOwnedLocked(epoch, owner)
}

func (v *Volume) promiseLocked(epoch uint64) error { return v.promiseOwnedLocked(epoch, 0) }

func (v *Volume) promiseOwnedLocked(epoch, owner uint64) error {
	m := v.meta.cur
	if epoch < m.Epoch {
		return fmt.Errorf("%w: epoch %d is below promised epoch %d", wire.ErrStaleEpoch, epoch, m.Epoch)
	}
	if epoch-m.Epoch > wire.MaxEpochJump {
		return fmt.Errorf("%w: volume %s: epoch %d jumps more than 2^32 beyond the highest promised epoch %d; refused, nothing changed",
			wire.ErrEpochJump, v.id, epoch, m.Epoch)
	}
	if epoch == m.Epoch {
		switch {
		case owner == 0 || m.EpochOwner == owner:
			return nil
		case m.EpochOwner != 0:
			return fmt.Errorf("%w: epoch %d was promised to another primary", wire.ErrStaleEpoch, epoch)
		}
		m.EpochOwner = owner
		return classifyIOError(v.meta.store(m))
	}
	m.Epoch, m.EpochOwner = epoch, owner
	if err := v.meta.store(m); err != nil {
		return classifyIOError(err)
	}
	v.store.log.Info("promised epoch", "volume_id", v.id, "epoch", epoch)
	return nil
}

// SetMembership durably records that this replica is a member of the
// in-sync set m (at the sender's epoch). Generations only grow: an older
// one than recorded is refused, so a delayed frame cannot roll it back.
func (v *Volume) SetMembership(epoch uint64, m wire.Membership) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.promiseLocked(epoch); err != nil {
		return err
	}
	cur := v.meta.cur
	if m.Gen < cur.Membership.Gen {
		return fmt.Errorf("%w: membership generation %d is below the recorded %d", wire.ErrInvalid, m.Gen, cur.Membership.Gen)
	}
	cur.Membership = wire.Membership{Gen: m.Gen, Replicas: append([]string(nil), m.Replicas...)}
	return classifyIOError(v.meta.store(cur))
}

// SetTargetGen records, durably, that the primary at epoch makes the
// replica a resync target under in-sync generation gen (see
// Meta.TargetGen). Generations only grow; recording the current one again
// does nothing.
func (v *Volume) SetTargetGen(epoch, gen uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.promiseLocked(epoch); err != nil {
		return err
	}
	cur := v.meta.cur
	switch {
	case gen < cur.TargetGen:
		return fmt.Errorf("%w: resync target generation %d is below the recorded %d", wire.ErrInvalid, gen, cur.TargetGen)
	case gen == cur.TargetGen:
		return nil
	}
	cur.TargetGen = gen
	return classifyIOError(v.meta.store(cur))
}

// admit takes the shared lock for an operation at epoch, fencing stale ones.
// A higher epoch than promised is an implicit promise. On success the caller
// must call v.mu.RUnlock.
func (v *Volume) admit(epoch uint64, writes bool) error {
	for {
		v.mu.RLock()
		m := v.meta.cur
		if epoch < m.Epoch {
			v.mu.RUnlock()
			return fmt.Errorf("%w: epoch %d is below promised epoch %d", wire.ErrStaleEpoch, epoch, m.Epoch)
		}
		if epoch == m.Epoch && (!writes || m.Generation == epoch) {
			return nil
		}
		v.mu.RUnlock()
		// Upgrade: record the new epoch, and the generation before the
		// first write of an epoch, then retry under the shared lock.
		v.mu.Lock()
		err := v.promiseLocked(epoch)
		if err == nil && writes && v.meta.cur.Generation < epoch {
			m := v.meta.cur
			m.Generation = epoch
			err = classifyIOError(v.meta.store(m))
		}
		v.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

func (v *Volume) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > v.size || n > v.size-off {
		return fmt.Errorf("%w: [%d, %d) outside volume %s of %d bytes", wire.ErrOutOfRange, off, off+n, v.id, v.size)
	}
	return nil
}

// WriteAt writes p at off; with fua the data is durable before it returns.
func (v *Volume) WriteAt(epoch uint64, p []byte, off int64, fua bool) error {
	if err := v.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	if err := v.admit(epoch, true); err != nil {
		return err
	}
	defer v.mu.RUnlock()
	if _, err := v.data.WriteAt(p, off); err != nil {
		return classifyIOError(fmt.Errorf("write replica %s: %w", v.id, err))
	}
	if fua {
		if err := v.data.Datasync(); err != nil {
			return classifyIOError(fmt.Errorf("sync replica %s: %w", v.id, err))
		}
	}
	return nil
}

// ReadAt reads len(p) bytes at off.
func (v *Volume) ReadAt(epoch uint64, p []byte, off int64) error {
	if err := v.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	if err := v.admit(epoch, false); err != nil {
		return err
	}
	defer v.mu.RUnlock()
	if _, err := v.data.ReadAt(p, off); err != nil {
		return fmt.Errorf("read replica %s: %w", v.id, err)
	}
	return nil
}

// Flush makes every write applied so far durable.
func (v *Volume) Flush(epoch uint64) error {
	if err := v.admit(epoch, false); err != nil {
		return err
	}
	defer v.mu.RUnlock()
	if err := v.data.Datasync(); err != nil {
		return classifyIOError(fmt.Errorf("sync replica %s: %w", v.id, err))
	}
	return nil
}

// Trim deallocates [off, off+n): the range reads back as zeroes and its
// blocks return to the host file system.
func (v *Volume) Trim(epoch uint64, off, n int64) error {
	if err := v.checkRange(off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if err := v.admit(epoch, true); err != nil {
		return err
	}
	defer v.mu.RUnlock()
	if err := v.data.PunchHole(off, n); err != nil {
		return classifyIOError(fmt.Errorf("punch hole in replica %s: %w", v.id, err))
	}
	return nil
}

// Close releases this user's hold. The last user's Close syncs the data,
// marks the replica clean and closes its files. A replica opened unclean
// (it crashed, and may have lost writes it had not flushed) stays unclean
// unless a primary used it meanwhile: one that only opened it (refused at
// its promise, or an operator's tool) must not hide the crash from the
// primary that needs to know.
func (v *Volume) Close() error {
	s := v.store
	s.mu.Lock()
	v.refs--
	if v.refs > 0 {
		s.mu.Unlock()
		return nil
	}
	delete(s.open, v.id)
	s.mu.Unlock()

	v.mu.Lock()
	defer v.mu.Unlock()
	err := v.data.Sync()
	if err == nil && (v.wasClean || v.used.Load()) {
		m := v.meta.cur
		m.Clean = true
		err = v.meta.store(m)
	}
	return errors.Join(err, v.data.Close(), v.meta.close())
}
