package mount

import (
	"fmt"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// mountEntry is one line of /proc/self/mountinfo, the fields Saddlebag
// uses, as github.com/moby/sys/mountinfo reads them (as Nomad does).
type mountEntry struct {
	ID           int
	Major, Minor uint32
	Root         string
	Point        string
	Options      string
	FSType       string
	Source       string
}

// readMounts reads /proc/self/mountinfo (the mounts of this process's
// namespace, in mount order).
func readMounts() ([]mountEntry, error) {
	infos, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return entries(infos), nil
}

func entries(infos []*mountinfo.Info) []mountEntry {
	out := make([]mountEntry, len(infos))
	for i, m := range infos {
		out[i] = mountEntry{ID: m.ID, Major: uint32(m.Major), Minor: uint32(m.Minor), Root: m.Root,
			Point: m.Mountpoint, Options: m.Options, FSType: m.FSType, Source: m.Source}
	}
	return out
}

// mountsAt returns the mounts whose mount point is path, in mount order
// (the last one is on top).
func mountsAt(mounts []mountEntry, path string) []mountEntry {
	var out []mountEntry
	for _, m := range mounts {
		if m.Point == path {
			out = append(out, m)
		}
	}
	return out
}

// mountsOfDevice returns the mounts of block device major:minor.
func mountsOfDevice(mounts []mountEntry, major, minor uint32) []mountEntry {
	var out []mountEntry
	for _, m := range mounts {
		if m.Major == major && m.Minor == minor {
			out = append(out, m)
		}
	}
	return out
}

// hasOption reports whether a comma-separated option list holds opt.
func hasOption(opts, opt string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == opt {
			return true
		}
	}
	return false
}

// blockDevNumber returns the major and minor number of a device node.
func blockDevNumber(dev string) (uint32, uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return 0, 0, fmt.Errorf("stat %s: %w", dev, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, 0, fmt.Errorf("%s is not a block device", dev)
	}
	return unix.Major(st.Rdev), unix.Minor(st.Rdev), nil
}
