package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

const (
	loopControl  = "/dev/loop-control"
	sysBlock     = "/sys/block"
	loopMajor    = 7
	attachTries  = 8
	detachSettle = 2 * time.Second
)

// loopsOf returns the loop devices (/dev/loopN) whose backing file is
// backing, in numeric order. A device being torn down may still be listed.
func loopsOf(backing string) ([]string, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("list loop devices: %w", err)
	}
	var nums []int
	for _, e := range ents {
		n, ok := strings.CutPrefix(e.Name(), "loop")
		num, err := strconv.Atoi(n)
		if !ok || err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(sysBlock, e.Name(), "loop", "backing_file"))
		if err != nil {
			continue // not bound
		}
		if strings.TrimSuffix(string(b), "\n") == backing {
			nums = append(nums, num)
		}
	}
	sort.Ints(nums)
	out := make([]string, len(nums))
	for i, n := range nums {
		out[i] = "/dev/loop" + strconv.Itoa(n)
	}
	return out, nil
}

// loopDirectIO reports whether the loop device does direct I/O to its
// backing file.
func loopDirectIO(dev string) bool {
	b, err := os.ReadFile(filepath.Join(sysBlock, filepath.Base(dev), "loop", "dio"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// attachLoop binds a free loop device to backing with LOOP_CONFIGURE (the
// ioctl losetup uses), with direct I/O so that the page cache does not sit
// between the file system and the volume file. It returns the device path.
// It is not idempotent on its own: callers look the file up with loopsOf
// first.
func attachLoop(backing string) (string, error) {
	bf, err := os.OpenFile(backing, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("open loop backing file: %w", err)
	}
	defer bf.Close()
	var lastErr error
	for try := 0; try < attachTries; try++ {
		n, err := freeLoop()
		if err != nil {
			return "", err
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		if err := ensureLoopNode(dev, n); err != nil {
			return "", err
		}
		lf, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return "", fmt.Errorf("open %s: %w", dev, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(bf.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_DIRECT_IO
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], backing)
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		lf.Close()
		if err == nil {
			return dev, nil
		}
		lastErr = fmt.Errorf("configure %s on %s: %w", dev, backing, err)
		if !errors.Is(err, unix.EBUSY) {
			return "", lastErr
		}
		// Another attacher took the same free device: ask again.
	}
	return "", lastErr
}

func freeLoop() (int, error) {
	ctl, err := os.OpenFile(loopControl, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", loopControl, err)
	}
	defer ctl.Close()
	n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
	if err != nil {
		return 0, fmt.Errorf("find a free loop device: %w", err)
	}
	return n, nil
}

// ensureLoopNode creates /dev/loopN when devtmpfs did not (some
// containers have a static /dev).
func ensureLoopNode(dev string, n int) error {
	if _, err := os.Stat(dev); err == nil {
		return nil
	}
	if err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(loopMajor, uint32(n)))); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create %s: %w", dev, err)
	}
	return nil
}

// detachLoop unbinds dev from its backing file (losetup -d). A device
// still open elsewhere (a lazily unmounted file system) is marked to
// detach on its last close, which is what the kernel does for
// LOOP_CLR_FD on a busy device. An unbound device is not an error.
func detachLoop(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	return nil
}

// waitLoopsGone waits a little for the kernel to finish detaching the loop
// devices of backing and returns those still bound.
func waitLoopsGone(backing string, wait time.Duration) ([]string, error) {
	deadline := time.Now().Add(wait)
	for {
		left, err := loopsOf(backing)
		if err != nil || len(left) == 0 || time.Now().After(deadline) {
			return left, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// AttachLoop returns the loop device bound to backing, attaching one (with
// direct I/O) if there is none. For raw block access and tools that want
// the device without a file system mounted.
func AttachLoop(backing string) (string, error) {
	dev, _, err := ensureLoop(backing, hclog.NewNullLogger())
	return dev, err
}

// DetachLoops detaches every loop device bound to backing and waits
// briefly for the kernel to let go of them. Nothing bound is not an error.
func DetachLoops(backing string) error {
	loops, err := loopsOf(backing)
	if err != nil {
		return err
	}
	for _, dev := range loops {
		if err := detachLoop(dev); err != nil {
			return err
		}
	}
	left, err := waitLoopsGone(backing, detachSettle)
	if err == nil && len(left) > 0 {
		err = fmt.Errorf("%w: loop devices %v still open", ErrPathBusy, left)
	}
	return err
}
