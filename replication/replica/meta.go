package replica

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// Meta is a replica's persistent metadata. It is small and rewritten whole.
type Meta struct {
	// VolumeID names the volume this replica belongs to.
	VolumeID string `json:"volume_id"`
	// Size is the volume size in bytes, a multiple of wire.BlockSize.
	Size int64 `json:"size"`
	// Epoch is the highest epoch promised to a primary. Frames carrying a
	// lower epoch are refused: this is the fence against stale primaries.
	Epoch uint64 `json:"epoch"`
	// EpochOwner names the primary Epoch was promised to (a random number
	// each engine draws; 0: anonymous).
	EpochOwner uint64 `json:"epoch_owner,omitempty"`
	// Generation is the highest epoch whose primary wrote to this replica.
	// Recovery uses it to tell which replicas have seen the newest history.
	Generation uint64 `json:"generation"`
	// Clean is true only while the replica is closed after a clean shutdown
	// (data fsynced); it is cleared, durably, before the first write after
	// an open.
	Clean bool `json:"clean"`
	// ActivityLog lists the extents (of the engine's ExtentSize, 4 MiB)
	// the primary marked hot: the only places where replicas may differ
	// after a primary crash.
	ActivityLog []uint64 `json:"activity_log,omitempty"`
	// Incarnation is a random number drawn when the replica is created. A
	// replica whose data directory was lost and created again has another
	// one, so nothing recorded about its predecessor (a persisted bitmap)
	// is ever applied to it.
	Incarnation uint64 `json:"incarnation,omitempty"`
	// Membership is the newest in-sync set this replica was made a member
	// of, with its generation. A primary writes it to every member before
	// it records the set in Consul and before any write that depends on
	// it completes, so a replica knows on its own whether it was current:
	// a replica whose generation is below the volume's newest one is stale
	// whatever Consul remembers (see wire.Membership).
	Membership wire.Membership `json:"membership"`
	// TargetGen is the in-sync generation of the primary that last made
	// this replica a resync target, recorded before it sends the replica
	// anything. A resync target receives writes without being a member,
	// so its Membership does not change with them; a member that leaves
	// the in-sync set misses writes the target still gets, and the
	// bitmaps that member holds for it then no longer say where it
	// differs. Bitmaps name the TargetGen they were kept for, and the
	// primary restarts every resync from a bitmap, marked with the new
	// generation, when a member leaves: a bitmap naming another one is
	// not trusted.
	TargetGen uint64 `json:"target_gen,omitempty"`
}

// A slot file holds two fixed-size slots. Each write goes to the slot not
// holding the newest version, with a higher sequence number and a checksum,
// then fsyncs. A torn or failed write therefore damages at most the slot
// being written, and the other slot still holds the previous version. The
// replica metadata and the persisted peer bitmaps use it.
const (
	slotHeaderSize = 24 // magic(8) seq(8) len(4) crc(4)
	slotMagic      = "SBMETA01"
	metaSlotSize   = 16 << 10
	// bitmapSlotSize holds the largest encoded peer bitmap.
	bitmapSlotSize = wire.MaxControlPayload + slotHeaderSize
)

// castagnoli is the CRC-32C table of the slot checksums.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrMetaCorrupt means neither slot of a slot file holds a valid version.
var ErrMetaCorrupt = errors.New("replica metadata corrupt: no valid slot")

// errSlotFileUnborn means a slot file's creation never completed (a crash
// between its creation and its first fsync). It is reported as
// fs.ErrNotExist too: such a file holds nothing, and its creator creates
// it again over it.
var errSlotFileUnborn = errors.New("slot file creation never completed")

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// slotFile is a crash-safe two-slot file. It is not safe for concurrent
// use; its owner serialises access.
type slotFile struct {
	f        File
	slotSize int
	seq      uint64 // sequence number of the newest valid slot
	payload  []byte // newest valid payload
}

func createSlotFile(fsys FileSystem, path string, slotSize int, payload []byte) (*slotFile, error) {
	f, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600) // over an unborn one, see errSlotFileUnborn
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(2 * int64(slotSize)); err != nil {
		f.Close()
		return nil, err
	}
	sf := &slotFile{f: f, slotSize: slotSize}
	if err := sf.store(payload); err != nil {
		f.Close()
		return nil, err
	}
	return sf, nil
}

func openSlotFile(fsys FileSystem, path string, slotSize int) (*slotFile, error) {
	f, err := fsys.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 2*slotSize)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	buf = buf[:n]
	sf := &slotFile{f: f, slotSize: slotSize}
	found := false
	for slot := 0; slot < 2; slot++ {
		lo := slot * slotSize
		if lo+slotSize > len(buf) {
			continue
		}
		seq, payload, ok := decodeSlot(buf[lo : lo+slotSize])
		if ok && (!found || seq > sf.seq) {
			sf.seq, sf.payload, found = seq, payload, true
		}
	}
	if !found {
		f.Close()
		// The first store writes slot 1 and syncs; slot 0 is written only
		// after that store completed. So a file without a valid slot
		// whose slot 0 was never written (zeros, or not even sized) is a
		// creation that never completed: nothing was ever stored in it.
		if len(buf) < 2*slotSize || allZero(buf[:slotSize]) {
			return nil, fmt.Errorf("%s: %w (%w)", path, errSlotFileUnborn, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("%s: %w", path, ErrMetaCorrupt)
	}
	return sf, nil
}

func decodeSlot(b []byte) (uint64, []byte, bool) {
	if len(b) < slotHeaderSize || string(b[:8]) != slotMagic {
		return 0, nil, false
	}
	seq := binary.LittleEndian.Uint64(b[8:])
	n := binary.LittleEndian.Uint32(b[16:])
	sum := binary.LittleEndian.Uint32(b[20:])
	if int64(n) > int64(len(b)-slotHeaderSize) {
		return 0, nil, false
	}
	payload := b[slotHeaderSize : slotHeaderSize+int(n)]
	if crc32.Update(crc32.Checksum(b[8:20], castagnoli), castagnoli, payload) != sum {
		return 0, nil, false
	}
	return seq, append([]byte(nil), payload...), true
}

// store durably replaces the content with payload.
func (sf *slotFile) store(payload []byte) error {
	if len(payload) > sf.slotSize-slotHeaderSize {
		return fmt.Errorf("%s: %d bytes do not fit a %d-byte slot", sf.f.Name(), len(payload), sf.slotSize)
	}
	seq := sf.seq + 1
	b := make([]byte, sf.slotSize)
	copy(b, slotMagic)
	binary.LittleEndian.PutUint64(b[8:], seq)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(payload)))
	copy(b[slotHeaderSize:], payload)
	binary.LittleEndian.PutUint32(b[20:], crc32.Update(crc32.Checksum(b[8:20], castagnoli), castagnoli, payload))
	if _, err := sf.f.WriteAt(b, int64(seq%2)*int64(sf.slotSize)); err != nil {
		return fmt.Errorf("write %s: %w", sf.f.Name(), err)
	}
	if err := sf.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", sf.f.Name(), err)
	}
	sf.seq, sf.payload = seq, payload
	return nil
}

func (sf *slotFile) close() error { return sf.f.Close() }

// metaFile is the replica metadata kept in a slot file.
type metaFile struct {
	sf  *slotFile
	cur Meta
}

func createMeta(fsys FileSystem, path string, m Meta) (*metaFile, error) {
	payload, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	sf, err := createSlotFile(fsys, path, metaSlotSize, payload)
	if err != nil {
		return nil, err
	}
	return &metaFile{sf: sf, cur: m}, nil
}

func openMeta(fsys FileSystem, path string) (*metaFile, error) {
	sf, err := openSlotFile(fsys, path, metaSlotSize)
	if err != nil {
		return nil, err
	}
	mf := &metaFile{sf: sf}
	if err := json.Unmarshal(sf.payload, &mf.cur); err != nil {
		sf.close()
		return nil, fmt.Errorf("%s: %w: %w", path, ErrMetaCorrupt, err)
	}
	return mf, nil
}

// ReadMeta reads the metadata of volume's replica under a store
// directory without opening the replica (read-only; the replica may be
// in use): for operators and tests that inspect what a replica promised.
func ReadMeta(dir, volume string) (Meta, error) {
	var m Meta
	if err := wire.ValidateVolumeID(volume); err != nil {
		return m, err
	}
	path := (&Store{dir: dir}).metaPath(volume)
	b, err := os.ReadFile(path)
	if err != nil {
		return m, err
	}
	var best []byte
	var bestSeq uint64
	for slot := 0; (slot+1)*metaSlotSize <= len(b); slot++ {
		seq, payload, ok := decodeSlot(b[slot*metaSlotSize : (slot+1)*metaSlotSize])
		if ok && (best == nil || seq > bestSeq) {
			best, bestSeq = payload, seq
		}
	}
	if best == nil {
		return m, fmt.Errorf("%s: %w", path, ErrMetaCorrupt)
	}
	if err := json.Unmarshal(best, &m); err != nil {
		return m, fmt.Errorf("%s: %w: %w", path, ErrMetaCorrupt, err)
	}
	return m, nil
}

// MarkUnclean marks volume's replica under a store directory as not shut
// down cleanly, durably, as a crash leaves it: for tests and drills that
// stand for a host that lost power (the replica must not be open).
func MarkUnclean(dir, volume string) error {
	if err := wire.ValidateVolumeID(volume); err != nil {
		return err
	}
	mf, err := openMeta(OSFS{}, (&Store{dir: dir}).metaPath(volume))
	if err != nil {
		return err
	}
	m := mf.cur
	m.Clean = false
	return errors.Join(mf.store(m), mf.close())
}

// ReadMetaOn is ReadMeta through fsys (nil: the real file system), such
// as the simulator's crash-recording one.
func ReadMetaOn(fsys FileSystem, dir, volume string) (Meta, error) {
	if fsys == nil {
		fsys = OSFS{}
	}
	mf, err := openMeta(fsys, filepath.Join(dir, volume, "meta"))
	if err != nil {
		return Meta{}, err
	}
	defer mf.close()
	return mf.cur, nil
}

// store durably replaces the metadata with m.
func (mf *metaFile) store(m Meta) error {
	payload, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := mf.sf.store(payload); err != nil {
		return err
	}
	mf.cur = m
	return nil
}

func (mf *metaFile) close() error { return mf.sf.close() }
