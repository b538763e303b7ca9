package mount

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Supported file system types.
const (
	FSExt4 = "ext4"
	FSXFS  = "xfs"
)

// ValidFSType returns an error wrapping ErrUnsupportedFS unless t is a
// file system Saddlebag formats and mounts.
func ValidFSType(t string) error {
	if t != FSExt4 && t != FSXFS {
		return fmt.Errorf("%w: %q (want %s or %s)", ErrUnsupportedFS, t, FSExt4, FSXFS)
	}
	return nil
}

// toolPath finds an administration tool on PATH or in the sbin
// directories, which a non-login PATH often lacks.
func toolPath(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return name
}

// runTool runs an external tool and returns its combined output; a
// failure is a *ToolError with the exit code.
func runTool(ctx context.Context, log hclog.Logger, name string, args ...string) (string, int, error) {
	cmd := exec.CommandContext(ctx, toolPath(name), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	log.Debug("running", "cmd", name, "args", args)
	err := cmd.Run()
	text := strings.TrimSpace(out.String())
	if err != nil {
		code := -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		return text, code, &ToolError{Args: append([]string{name}, args...), Code: code, Output: text, Err: err}
	}
	return text, 0, nil
}

// probe reports what dev holds: a file system type, "" for nothing
// recognisable (blank), or an error wrapping ErrUnknownContent for data
// that is not a file system (a partition table, a RAID member...). It
// reads the device itself (blkid -p), never a cache.
func probe(ctx context.Context, log hclog.Logger, dev string) (string, error) {
	out, code, err := runTool(ctx, log, "blkid", "-p", "-o", "export", dev)
	if code == 2 {
		return "", nil // nothing found
	}
	if err != nil {
		return "", fmt.Errorf("probe %s: %w", dev, err)
	}
	vals := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vals[k] = v
		}
	}
	if t := vals["TYPE"]; t != "" && (vals["USAGE"] == "" || vals["USAGE"] == "filesystem") {
		return t, nil
	}
	return "", fmt.Errorf("%w: %s: %s", ErrUnknownContent, dev, strings.ReplaceAll(out, "\n", " "))
}

// format makes a file system of type fsType on dev. It must only be
// called on a device probe found blank, or one whose checkpoint says an
// earlier format of it did not finish: it forces over whatever is there.
func format(ctx context.Context, log hclog.Logger, dev, fsType string, opts []string) error {
	var name string
	var args []string
	switch fsType {
	case FSExt4:
		name, args = "mkfs.ext4", []string{"-F", "-q"}
	case FSXFS:
		name, args = "mkfs.xfs", []string{"-f", "-q"}
	default:
		return ValidFSType(fsType)
	}
	args = append(append(args, opts...), dev)
	if _, _, err := runTool(ctx, log, name, args...); err != nil {
		return fmt.Errorf("format %s as %s: %w", dev, fsType, err)
	}
	return nil
}

// check runs the file system's pre-mount check. ext4: e2fsck -p replays
// the journal and fixes what is safe to fix; exit 1 and 2 mean errors were
// corrected. xfs has no pre-mount check: mount replays its log, and
// xfs_repair refuses a dirty log.
func check(ctx context.Context, log hclog.Logger, dev, fsType string) error {
	if fsType != FSExt4 {
		return nil
	}
	out, code, err := runTool(ctx, log, "e2fsck", "-p", dev)
	switch {
	case err == nil:
		return nil
	case code == 1 || code == 2:
		log.Warn("file system errors corrected", "device", dev, "output", out)
		return nil
	case code >= 4:
		return fmt.Errorf("%w: %s: %w", ErrFSCorrupt, dev, err)
	default:
		return fmt.Errorf("check %s: %w", dev, err)
	}
}

// mountFlagBits are the mount(8) options that are mount(2) flags; every
// other option is passed to the file system as data.
var mountFlagBits = map[string]struct {
	set   bool
	flags uintptr
}{
	"ro": {true, unix.MS_RDONLY}, "rw": {false, unix.MS_RDONLY},
	"nosuid": {true, unix.MS_NOSUID}, "suid": {false, unix.MS_NOSUID},
	"nodev": {true, unix.MS_NODEV}, "dev": {false, unix.MS_NODEV},
	"noexec": {true, unix.MS_NOEXEC}, "exec": {false, unix.MS_NOEXEC},
	"sync": {true, unix.MS_SYNCHRONOUS}, "async": {false, unix.MS_SYNCHRONOUS},
	"dirsync": {true, unix.MS_DIRSYNC}, "mand": {true, unix.MS_MANDLOCK}, "nomand": {false, unix.MS_MANDLOCK},
	"noatime": {true, unix.MS_NOATIME}, "atime": {false, unix.MS_NOATIME},
	"nodiratime": {true, unix.MS_NODIRATIME}, "diratime": {false, unix.MS_NODIRATIME},
	"relatime": {true, unix.MS_RELATIME}, "norelatime": {false, unix.MS_RELATIME},
	"strictatime": {true, unix.MS_STRICTATIME}, "lazytime": {true, unix.MS_LAZYTIME},
	"nolazytime": {false, unix.MS_LAZYTIME}, "defaults": {false, 0},
}

// ParseMountOptions splits mount(8)-style options into mount(2) flags and
// the file-system-specific data string. Options may be given one per
// element or comma-separated.
func ParseMountOptions(opts []string) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, o := range opts {
		for _, p := range strings.Split(o, ",") {
			p = strings.TrimSpace(p)
			if p == "" {
				continue
			}
			if b, ok := mountFlagBits[p]; ok {
				if b.set {
					flags |= b.flags
				} else {
					flags &^= b.flags
				}
				continue
			}
			if !slices.Contains(data, p) {
				data = append(data, p)
			}
		}
	}
	return flags, strings.Join(data, ",")
}
