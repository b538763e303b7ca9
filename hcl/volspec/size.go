package volspec

import (
	"fmt"
	"math"

	"github.com/saddlebag/saddlebag/internal/units"
)

// BlockSize is the unit of a volume's size: sizes are whole multiples of
// it (docs/architecture.md, "Volumes").
const BlockSize = 4096

// DefaultSize is the size of a volume whose capacity range asks for none
// (no capacity_min, no CSI required_bytes): 1 GiB, or capacity_max
// rounded down to 4 KiB when that is smaller.
const DefaultSize = 1 << 30

// The smallest volumes the file systems are made on. MinXFSBytes is what
// mkfs.xfs formats at all (xfsprogs 5.19 and later refuse anything under
// 300 MiB). MinExt4Bytes is the smallest ext4 that has a journal whatever
// block size mkfs.ext4 picks or is given: mke2fs makes a journal only on
// 2048 blocks or more, 8 MiB of 4 KiB blocks (under ~100 KiB it fails
// outright, and under 8 MiB it may make a file system without a journal,
// which a crash can leave needing a full fsck).
const (
	MinXFSBytes  = 300 << 20
	MinExt4Bytes = 8 << 20
)

// MinSize is the smallest volume that holds a file system of type fsType
// (BlockSize for "", a raw block volume, and for a type Saddlebag does
// not make).
func MinSize(fsType string) int64 {
	switch fsType {
	case "xfs":
		return MinXFSBytes
	case "ext4":
		return MinExt4Bytes
	}
	return BlockSize
}

// SizeProblem is the kind of a *SizeError.
type SizeProblem int

const (
	// RangeInverted: capacity_min is above capacity_max.
	RangeInverted SizeProblem = iota + 1
	// NoWholeBlocks: no multiple of BlockSize lies in the range.
	NoWholeBlocks
	// TooSmallForFS: the size is below MinSize of the volume's file system.
	TooSmallForFS
)

// SizeError is a capacity range or size Saddlebag makes no volume of;
// branch on Problem. Its text names the spec's fields (capacity_min,
// capacity_max: CSI's required_bytes and limit_bytes) and what would be
// valid.
type SizeError struct {
	Problem SizeProblem
	// Field is the bound to change, "capacity_min" or "capacity_max"; ""
	// from FitsFS, which has no range.
	Field string
	// Summary says what is wrong, Detail what would be valid.
	Summary, Detail string
}

func (e *SizeError) Error() string { return e.Summary + "; " + e.Detail }

// Size picks the size of a volume from its capacity range, the one rule
// both the plugin's CreateVolume and the spec checks (`saddlebag volume
// validate`) follow: lo (capacity_min, CSI required_bytes) rounded up
// to a multiple of BlockSize; with no lo, DefaultSize, or hi
// (capacity_max, limit_bytes) rounded down to BlockSize when that is
// smaller. 0 means a
// bound is not set; both must be >= 0. fsType is the file system the
// volume is to hold ("" for a volume only ever attached as a raw block
// device): the size must be at least MinSize(fsType). A range that gives
// no such size is a *SizeError.
func Size(lo, hi int64, fsType string) (int64, error) {
	if hi != 0 && lo > hi {
		return 0, &SizeError{Problem: RangeInverted, Field: "capacity_min",
			Summary: fmt.Sprintf("capacity_min (%s) is larger than capacity_max (%s)", units.FormatBytes(lo), units.FormatBytes(hi)),
			Detail:  "capacity_min must be at most capacity_max; set both to the same value for an exact size"}
	}
	size, ok := roundUp(max(lo, BlockSize))
	if !ok {
		return 0, &SizeError{Problem: NoWholeBlocks, Field: "capacity_min",
			Summary: fmt.Sprintf("capacity_min (%d bytes) is too large", lo),
			Detail:  "a volume is at most " + units.FormatBytes(math.MaxInt64/BlockSize*BlockSize)}
	}
	if hi != 0 && size > hi {
		return 0, &SizeError{Problem: NoWholeBlocks, Field: "capacity_max",
			Summary: fmt.Sprintf("no size from capacity_min to capacity_max (%s) is a whole number of 4 KiB blocks", units.FormatBytes(hi)),
			Detail:  fmt.Sprintf("Saddlebag volumes are a multiple of 4096 bytes: allow at least %d bytes (%s)", size, units.FormatBytes(size))}
	}
	if lo == 0 {
		size = DefaultSize
		if hi != 0 && hi < size {
			size = hi / BlockSize * BlockSize
		}
	}
	field := "capacity_min"
	if lo == 0 {
		field = "capacity_max"
	}
	if err := fitsFS(fsType, size, field); err != nil {
		return 0, err
	}
	return size, nil
}

// FitsFS checks that a volume of size bytes holds a file system of type
// fsType (see MinSize): nil, or a *SizeError saying the smallest size.
// `saddlebag engine --mount` and the node's stage check it before mkfs.
func FitsFS(fsType string, size int64) error { return fitsFS(fsType, size, "") }

func fitsFS(fsType string, size int64, field string) error {
	least := MinSize(fsType)
	if size >= least {
		return nil
	}
	if fsType == "" {
		fsType = "a volume"
	}
	e := &SizeError{Problem: TooSmallForFS, Field: field,
		Summary: fmt.Sprintf("%s needs a volume of at least %s, not %s", fsType, units.FormatBytes(least), units.FormatBytes(size))}
	if field != "" {
		e.Detail = fmt.Sprintf("raise %s to %q or more", field, units.FormatBytes(least))
	} else {
		e.Detail = fmt.Sprintf("make the volume %s or larger", units.FormatBytes(least))
	}
	if fsType == "xfs" {
		e.Detail += ", or use ext4 (which needs " + units.FormatBytes(MinExt4Bytes) + ")"
	}
	return e
}

// roundUp rounds n up to a multiple of BlockSize; false when that
// overflows.
func roundUp(n int64) (int64, bool) {
	if n > math.MaxInt64/BlockSize*BlockSize {
		return 0, false
	}
	return (n + BlockSize - 1) / BlockSize * BlockSize, true
}
