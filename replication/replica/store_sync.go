package replica

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc64"
	"io/fs"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// The replica-side operations that recovery needs: the activity log, the
// primary's persisted bitmaps of blocks other replicas miss, block
// checksums, and the map of allocated (non-hole) ranges.

// maxChecksumLen bounds one checksum request: 8 bytes per block must fit a
// control payload.
const maxChecksumLen = (wire.MaxControlPayload / 8) * wire.BlockSize

var crc64Table = crc64.MakeTable(crc64.ECMA)

// SetActivityLog durably replaces the replica's activity log.
func (v *Volume) SetActivityLog(epoch uint64, extents []uint64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.promiseLocked(epoch); err != nil {
		return err
	}
	m := v.meta.cur
	m.ActivityLog = append([]uint64(nil), extents...)
	return classifyIOError(v.meta.store(m))
}

func (v *Volume) peerPath(peer string) string {
	return filepath.Join(v.store.dir, v.id, "peer-"+hex.EncodeToString([]byte(peer)))
}

// PutPeerBitmap durably stores the primary's encoded bitmap of the blocks
// replica peer misses; an empty bitmap removes it.
func (v *Volume) PutPeerBitmap(epoch uint64, peer string, enc []byte) error {
	if err := v.admit(epoch, false); err != nil {
		return err
	}
	defer v.mu.RUnlock()
	v.peerMu.Lock()
	defer v.peerMu.Unlock()
	path := v.peerPath(peer)
	if len(enc) == 0 {
		if err := v.store.fs.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	sf, err := openSlotFile(v.store.fs, path, bitmapSlotSize)
	if errors.Is(err, fs.ErrNotExist) {
		sf, err = createSlotFile(v.store.fs, path, bitmapSlotSize, enc)
		if err == nil {
			err = v.store.fs.SyncDir(filepath.Dir(path))
		}
	} else if err == nil {
		err = sf.store(enc)
	}
	if sf != nil {
		sf.close()
	}
	return classifyIOError(err)
}

// PeerBitmap returns the stored bitmap for peer; wire.ErrVolumeNotFound wraps
// the error when there is none.
func (v *Volume) PeerBitmap(epoch uint64, peer string) ([]byte, error) {
	if err := v.admit(epoch, false); err != nil {
		return nil, err
	}
	defer v.mu.RUnlock()
	v.peerMu.Lock()
	defer v.peerMu.Unlock()
	sf, err := openSlotFile(v.store.fs, v.peerPath(peer), bitmapSlotSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no bitmap for peer %s", wire.ErrVolumeNotFound, peer)
	}
	if err != nil {
		return nil, err
	}
	defer sf.close()
	return sf.payload, nil
}

// Checksums returns a CRC-64 of each block in [off, off+n), 8 bytes each.
func (v *Volume) Checksums(epoch uint64, off, n int64) ([]byte, error) {
	if err := v.checkRange(off, n); err != nil {
		return nil, err
	}
	if n%wire.BlockSize != 0 || off%wire.BlockSize != 0 || n > maxChecksumLen {
		return nil, fmt.Errorf("%w: checksum range [%d, +%d) must be block aligned and at most %d bytes", wire.ErrInvalid, off, n, maxChecksumLen)
	}
	buf := make([]byte, n)
	if err := v.ReadAt(epoch, buf, off); err != nil {
		return nil, err
	}
	out := make([]byte, 0, n/wire.BlockSize*8)
	for i := int64(0); i < n; i += wire.BlockSize {
		out = binary.BigEndian.AppendUint64(out, crc64.Checksum(buf[i:i+wire.BlockSize], crc64Table))
	}
	return out, nil
}

// maxAllocatedRuns bounds an Allocated answer; past it the rest of the
// range is reported allocated (a superset is safe for copying).
const maxAllocatedRuns = wire.MaxControlPayload/16 - 1

// Allocated returns the ranges of [off, off+n) that hold data (not holes),
// as pairs of offset and length.
func (v *Volume) Allocated(epoch uint64, off, n int64) ([][2]int64, error) {
	if err := v.checkRange(off, n); err != nil {
		return nil, err
	}
	if err := v.admit(epoch, false); err != nil {
		return nil, err
	}
	defer v.mu.RUnlock()
	end := off + n
	var out [][2]int64
	for pos := off; pos < end; {
		if len(out) == maxAllocatedRuns {
			out = append(out, [2]int64{pos, end - pos})
			break
		}
		data, err := v.data.SeekData(pos)
		if errors.Is(err, unix.ENXIO) || (err == nil && data >= end) {
			break
		}
		if err != nil {
			return [][2]int64{{off, n}}, nil // no hole support: all data
		}
		hole, err := v.data.SeekHole(data)
		if err != nil || hole > end {
			hole = end
		}
		out = append(out, [2]int64{data, hole - data})
		pos = hole
	}
	return out, nil
}
