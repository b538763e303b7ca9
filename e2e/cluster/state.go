package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/internal/procstat"
)

// StateDir holds one state file per running instance.
const StateDir = "/run/saddlebag-e2e"

// State is everything an instance made, so that any process can tear it
// down: the test that started it, `make dev-down`, or a later test
// cleaning up after one that died.
type State struct {
	Instance int    `json:"instance"`
	Dir      string `json:"dir"`
	// RemoveDir: Dir was made by the harness and goes at teardown.
	RemoveDir bool `json:"remove_dir"`
	// Owner is the process whose lifetime bounds the instance (the test
	// binary); zero for a detached demo cluster, which only an explicit
	// teardown removes.
	OwnerPID   int    `json:"owner_pid,omitempty"`
	OwnerStart uint64 `json:"owner_start,omitempty"`

	Bridge string `json:"bridge"`
	// Namespaces are the nodes' network namespaces, in node order;
	// ServerNamespace is the servers'.
	Namespaces      []string     `json:"namespaces"`
	ServerNamespace string       `json:"server_namespace,omitempty"`
	Cgroups         []string     `json:"cgroups"`
	Procs           []ProcRecord `json:"procs"`

	NomadAddr  string `json:"nomad_addr,omitempty"`
	ConsulAddr string `json:"consul_addr,omitempty"`
}

// StatePath is instance n's state file.
func StatePath(n int) string { return filepath.Join(StateDir, strconv.Itoa(n)+".json") }

func (s *State) save() error {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := StatePath(s.Instance) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, StatePath(s.Instance))
}

// LoadState reads instance n's state file.
func LoadState(n int) (*State, error) {
	b, err := os.ReadFile(StatePath(n))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", StatePath(n), err)
	}
	return &s, nil
}

// Instances lists the instance numbers that have a state file.
func Instances() ([]int, error) {
	ents, err := os.ReadDir(StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ns []int
	for _, e := range ents {
		if n, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".json")); err == nil && strings.HasSuffix(e.Name(), ".json") {
			ns = append(ns, n)
		}
	}
	sort.Ints(ns)
	return ns, nil
}

// orphaned reports whether s belongs to a test process that is gone.
func (s *State) orphaned() bool {
	if s.OwnerPID == 0 {
		return false
	}
	own, err := procstat.Read(s.OwnerPID)
	return err != nil || own.StartTime != s.OwnerStart
}

// Destroy tears down everything s records, in an order that lets each
// step succeed: every process (first every process in each node's
// namespace: agents, tasks, Saddlebag; then the recorded ones), then
// mounts and loop devices under the instance's directory, namespaces,
// bridge and cgroups, the directory itself when the harness made it, and
// last the state file. It goes on past failures and returns them all;
// run it again to retry.
func (s *State) Destroy(ctx context.Context) error {
	var errs []error
	namespaces := s.Namespaces
	if s.ServerNamespace != "" {
		namespaces = append(slices.Clone(namespaces), s.ServerNamespace)
	}
	for _, ns := range namespaces {
		errs = append(errs, killNetns(ns, 10*time.Second))
	}
	for _, p := range s.Procs {
		errs = append(errs, killRecorded(p, 10*time.Second))
	}
	if s.Dir != "" {
		// Loop devices first: once their file systems are lazily
		// unmounted, a backing file's path no longer shows that it was
		// under the directory (a node's FUSE file shows as "/<volume>").
		devs, err := mountDevsUnder(s.Dir)
		abortFUSE(devs)
		errs = append(errs, err, detachLoops(s.Dir, devs), unmountUnder(s.Dir), waitLoopsGone(s.Dir, devs))
	}
	for _, ns := range namespaces {
		errs = append(errs, deleteNetns(ctx, ns))
	}
	if s.Bridge != "" {
		errs = append(errs, deleteLink(ctx, s.Bridge))
	}
	for _, cg := range s.Cgroups {
		errs = append(errs, removeCgroups(cg))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if s.RemoveDir && s.Dir != "" {
		if m, err := mountsUnder(s.Dir); err != nil || len(m) > 0 {
			return fmt.Errorf("not removing %s: mounts remain %v (%v)", s.Dir, m, err)
		}
		if err := os.RemoveAll(s.Dir); err != nil {
			return err
		}
	}
	if err := os.Remove(StatePath(s.Instance)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Clean(dir)))
	if err != nil {
		return nil, err
	}
	mps := make([]string, len(infos))
	for i, m := range infos {
		mps[i] = m.Mountpoint
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	return mps, nil
}

// unmountUnder lazily unmounts everything mounted at or below dir (what
// Nomad's task directories and a CSI plugin leave when killed), deepest
// first, until nothing is left.
func unmountUnder(dir string) error {
	for range 10 {
		mps, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mps) == 0 {
			return nil
		}
		for _, mp := range mps {
			if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
				return fmt.Errorf("unmount %s: %w", mp, err)
			}
		}
	}
	mps, _ := mountsUnder(dir)
	return fmt.Errorf("mounts under %s remain: %v", dir, mps)
}

// abortFUSE aborts the FUSE connections of the file systems in devs
// (their device is 0:N for connection N). Every process is dead by now,
// but a connection whose descriptor was parked (issue 13's keeper) can
// outlive them with requests waiting that nobody will answer; the ext4
// on the loop device over its file then never lets the loop device go.
// Aborted, those requests fail and the teardown below completes. Only
// connections of file systems mounted under the instance's directory.
func abortFUSE(devs map[uint64]bool) {
	for dev := range devs {
		if unix.Major(dev) != 0 {
			continue
		}
		abort := filepath.Join("/sys/fs/fuse/connections", strconv.FormatUint(uint64(unix.Minor(dev)), 10), "abort")
		if _, err := os.Stat(abort); err == nil {
			_ = os.WriteFile(abort, []byte("1"), 0o200)
		}
	}
}

// mountDevsUnder returns the device numbers (major:minor) of the file
// systems mounted at or below dir.
func mountDevsUnder(dir string) (map[uint64]bool, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Clean(dir)))
	if err != nil {
		return nil, err
	}
	devs := map[uint64]bool{}
	for _, m := range infos {
		devs[unix.Mkdev(uint32(m.Major), uint32(m.Minor))] = true
	}
	return devs, nil
}

// ourLoops lists the loop devices whose backing file is under dir or on a
// file system in devs (one mounted under dir, such as a node's FUSE
// file), with the backing file as the kernel shows it.
func ourLoops(dir string, devs map[uint64]bool) map[string]string {
	loops := map[string]string{}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
		backing := strings.TrimSpace(string(b))
		if backing == dir || strings.HasPrefix(backing, dir+"/") || devs[loopBackingDev(dev)] {
			loops[dev] = backing
		}
	}
	return loops
}

// loopBackingDev returns the device number of the file system holding a
// loop device's backing file (0 if it cannot be read).
func loopBackingDev(dev string) uint64 {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return 0
	}
	return info.Device
}

// detachLoops detaches (or, while a file system on it is still mounted,
// marks for detaching once unmounted) every loop device of ourLoops.
func detachLoops(dir string, devs map[uint64]bool) error {
	var errs []error
	for dev := range ourLoops(dir, devs) {
		if _, err := run(context.Background(), "losetup", "-d", dev); err != nil && linkBacked(dev) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// linkBacked reports whether a loop device still has a backing file.
func linkBacked(dev string) bool {
	_, err := os.Stat(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	return err == nil
}

// waitLoopsGone detaches what is left after the unmounts and waits for
// the kernel to let every one of ourLoops go.
func waitLoopsGone(dir string, devs map[uint64]bool) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := ourLoops(dir, devs)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("loop devices still attached: %v", left)
		}
		_ = detachLoops(dir, devs)
		time.Sleep(100 * time.Millisecond)
	}
}

// removeCgroups removes the cgroup directory name (a Nomad client's
// cgroup_parent) and everything below it, in every hierarchy. Only
// directories are removed (rmdir), bottom up; a cgroup that still holds a
// process makes this fail, which is right: nothing should be left running.
func removeCgroups(name string) error {
	roots := []string{filepath.Join("/sys/fs/cgroup", name)}
	hier, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
	roots = append(roots, hier...)
	var errs []error
	for _, root := range roots {
		st, err := os.Stat(root)
		if err != nil || !st.IsDir() {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if err := removeCgroupDir(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeCgroupDir rmdirs one cgroup, retrying briefly: the kernel keeps a
// cgroup busy for a moment after its last process has exited.
func removeCgroupDir(d string) error {
	var err error
	for range 50 {
		if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", d, err)
}

// reapOrphans destroys the instances whose owning test process is gone
// (it was killed before its cleanup ran), so their namespaces, bridges,
// mounts and processes do not pile up or collide with new ones.
func reapOrphans(ctx context.Context, logf func(string, ...any)) {
	ns, _ := Instances()
	for _, n := range ns {
		s, err := LoadState(n)
		if err != nil || !s.orphaned() {
			continue
		}
		logf("e2e cluster: removing instance %d left by dead process %d", n, s.OwnerPID)
		if err := s.Destroy(ctx); err != nil {
			logf("e2e cluster: instance %d: %v", n, err)
		}
	}
}
