package mount

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	ID           int
	Major, Minor uint32
	Root         string
	Point        string
	Options      string
	FSType       string
	Source       string
}

// readMounts parses /proc/self/mountinfo (the mounts of this process's
// namespace, in mount order).
func readMounts() ([]mountEntry, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return parseMountInfo(data)
}

func parseMountInfo(data []byte) ([]mountEntry, error) {
	var out []mountEntry
	s := bufio.NewScanner(bytes.NewReader(data))
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		f := strings.Fields(s.Text())
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || sep+2 >= len(f) {
			return nil, fmt.Errorf("malformed mountinfo line %q", s.Text())
		}
		id, err := strconv.Atoi(f[0])
		if err != nil {
			return nil, fmt.Errorf("malformed mountinfo line %q", s.Text())
		}
		maj, min, ok := strings.Cut(f[2], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("malformed mountinfo device %q", f[2])
		}
		out = append(out, mountEntry{ID: id, Major: uint32(ma), Minor: uint32(mi), Root: unescape(f[3]),
			Point: unescape(f[4]), Options: f[5], FSType: f[sep+1], Source: unescape(f[sep+2])})
	}
	return out, s.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space, ...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
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
