package replication

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
)

// Meta is a replica's persistent metadata. It is small and rewritten whole.
type Meta struct {
	// VolumeID names the volume this replica belongs to.
	VolumeID string `json:"volume_id"`
	// Size is the volume size in bytes, a multiple of BlockSize.
	Size int64 `json:"size"`
	// Epoch is the highest epoch promised to a primary. Frames carrying a
	// lower epoch are refused: this is the fence against stale primaries.
	Epoch uint64 `json:"epoch"`
	// Generation is the highest epoch whose primary wrote to this replica.
	// Recovery uses it to tell which replicas have seen the newest history.
	Generation uint64 `json:"generation"`
	// Clean is true only while the replica is closed after a clean shutdown
	// (data fsynced); it is cleared, durably, before the first write after
	// an open.
	Clean bool `json:"clean"`
}

// The metadata file holds two fixed-size slots. Each write goes to the slot
// not holding the newest version, with a higher sequence number and a
// checksum, then fsyncs. A torn or failed write therefore damages at most the
// slot being written, and the other slot still holds the previous version.
const (
	metaSlotSize   = 4096
	metaHeaderSize = 24 // magic(8) seq(8) len(4) crc(4)
	metaMagic      = "SBMETA01"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrMetaCorrupt means neither metadata slot holds a valid version.
var ErrMetaCorrupt = errors.New("replica metadata corrupt: no valid slot")

// metaFile is the crash-safe two-slot metadata file of one replica.
// It is not safe for concurrent use; the owning volume serialises access.
type metaFile struct {
	f   *os.File
	seq uint64 // sequence number of the newest valid slot
	cur Meta
}

func createMeta(path string, m Meta) (*metaFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(2 * metaSlotSize); err != nil {
		f.Close()
		return nil, err
	}
	mf := &metaFile{f: f}
	if err := mf.store(m); err != nil {
		f.Close()
		return nil, err
	}
	return mf, nil
}

func openMeta(path string) (*metaFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 2*metaSlotSize)
	n, err := f.ReadAt(buf, 0)
	if err != nil && n == 0 {
		f.Close()
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	buf = buf[:n]
	mf := &metaFile{f: f}
	found := false
	for slot := 0; slot < 2; slot++ {
		lo := slot * metaSlotSize
		if lo+metaSlotSize > len(buf) {
			continue
		}
		seq, m, ok := decodeMetaSlot(buf[lo : lo+metaSlotSize])
		if ok && (!found || seq > mf.seq) {
			mf.seq, mf.cur, found = seq, m, true
		}
	}
	if !found {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, ErrMetaCorrupt)
	}
	return mf, nil
}

func decodeMetaSlot(b []byte) (uint64, Meta, bool) {
	var m Meta
	if len(b) < metaHeaderSize || string(b[:8]) != metaMagic {
		return 0, m, false
	}
	seq := binary.LittleEndian.Uint64(b[8:])
	n := binary.LittleEndian.Uint32(b[16:])
	sum := binary.LittleEndian.Uint32(b[20:])
	if int(n) > len(b)-metaHeaderSize {
		return 0, m, false
	}
	payload := b[metaHeaderSize : metaHeaderSize+int(n)]
	c := crc32.Update(crc32.Checksum(b[8:20], castagnoli), castagnoli, payload)
	if c != sum {
		return 0, m, false
	}
	if err := json.Unmarshal(payload, &m); err != nil {
		return 0, m, false
	}
	return seq, m, true
}

// store durably replaces the metadata with m.
func (mf *metaFile) store(m Meta) error {
	payload, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(payload) > metaSlotSize-metaHeaderSize {
		return fmt.Errorf("replica metadata too large: %d bytes", len(payload))
	}
	seq := mf.seq + 1
	b := make([]byte, metaSlotSize)
	copy(b, metaMagic)
	binary.LittleEndian.PutUint64(b[8:], seq)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(payload)))
	copy(b[metaHeaderSize:], payload)
	binary.LittleEndian.PutUint32(b[20:], crc32.Update(crc32.Checksum(b[8:20], castagnoli), castagnoli, payload))
	if _, err := mf.f.WriteAt(b, int64(seq%2)*metaSlotSize); err != nil {
		return fmt.Errorf("write replica metadata: %w", err)
	}
	if err := mf.f.Sync(); err != nil {
		return fmt.Errorf("sync replica metadata: %w", err)
	}
	mf.seq, mf.cur = seq, m
	return nil
}

func (mf *metaFile) close() error { return mf.f.Close() }
