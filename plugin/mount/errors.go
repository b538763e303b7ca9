package mount

import (
	"errors"
	"fmt"
)

var (
	// ErrFSTypeMismatch means the device holds a file system of another
	// type than the one asked for; nothing was changed. Errors carrying it
	// are *FSTypeMismatchError.
	ErrFSTypeMismatch = errors.New("file system type mismatch")
	// ErrUnknownContent means the device holds data that is not a file
	// system Saddlebag mounts (a partition table, RAID member, swap, ...);
	// it is never formatted over.
	ErrUnknownContent = errors.New("device holds unrecognised data")
	// ErrHoldsData means the device reads as blank although the volume has
	// been written to: its data is gone or unreadable (a replica that lost
	// it served by mistake), or a first mkfs elsewhere did not finish. It
	// is never formatted over: that would destroy what may still be
	// recoverable.
	ErrHoldsData = errors.New("volume has been written to but holds no file system: refusing to format it")
	// ErrTooSmall means the volume is too small for the file system asked
	// for (volspec.MinSize); nothing was formatted. The error also
	// carries the *volspec.SizeError saying the smallest size.
	ErrTooSmall = errors.New("volume too small for its file system")
	// ErrUnsupportedFS means a file system type other than ext4 or xfs
	// was asked for.
	ErrUnsupportedFS = errors.New("unsupported file system type")
	// ErrFSCorrupt means the file system check found errors it could not
	// correct; the file system was not mounted.
	ErrFSCorrupt = errors.New("file system check failed")
	// ErrPathBusy means a staging or target path is already a mount point
	// of something else, or a mount is still in use.
	ErrPathBusy = errors.New("path busy")
	// ErrServerAlive means Recover found the FUSE server answering and
	// was not told to tear it down anyway; nothing was changed.
	ErrServerAlive = errors.New("fuse server still answering")
	// ErrTool means an external tool (blkid, mkfs, fsck) failed to run or
	// reported an operational error.
	ErrTool = errors.New("tool failed")
)

// FSTypeMismatchError says which file system was found and which asked for.
type FSTypeMismatchError struct {
	Device, Found, Want string
}

func (e *FSTypeMismatchError) Error() string {
	return fmt.Sprintf("%s holds a %s file system, not %s: refusing to mount or reformat it", e.Device, e.Found, e.Want)
}

// Unwrap makes errors.Is(err, ErrFSTypeMismatch) true.
func (e *FSTypeMismatchError) Unwrap() error { return ErrFSTypeMismatch }

// ToolError is a failed run of an external tool, with its output.
type ToolError struct {
	Args   []string
	Code   int // exit code, -1 if it did not run or was killed
	Output string
	Err    error
}

func (e *ToolError) Error() string {
	return fmt.Sprintf("%v: exit %d: %v: %s", e.Args, e.Code, e.Err, e.Output)
}

// Unwrap makes errors.Is(err, ErrTool) true and exposes the cause.
func (e *ToolError) Unwrap() []error { return []error{ErrTool, e.Err} }
