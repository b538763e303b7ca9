package fdkeeper

// Freeing a node process stuck exiting. A process that serves FUSE and
// is killed while one of its threads waits, in the kernel, for I/O on
// its own FUSE file (mount(2) of the file system on the loop device,
// umount(2) flushing dirty data, the loop attach) never exits: the other
// threads die, the group leader becomes a zombie (or, when the leader is
// the waiting thread, stays in D state with SIGKILL pending), and the
// waiting thread stays in D state, holding the file table (so the /dev/fuse descriptors
// that would end those connections are never closed) and waiting for a
// reply only the dead process could send. Nomad waits for that process
// to exit before it starts the next one, so every volume of the host
// stays blocked. Only aborting the FUSE connection the thread waits on
// frees it.
//
// So the keeper watches each node process that talked to it (its pid
// from SO_PEERCRED, its FUSE directory from the request) and, once it has
// been stuck (procState.stuck) for Grace,
// aborts the connections of that node's volumes that are not parked here
// (nobody else holds them: they would end with the process anyway);
// after another Grace, if it still lingers, the parked ones with requests
// waiting (they cannot be adopted while it lingers), and after a third,
// every parked one left. A process that is alive, even
// blocked in D state, is never touched; nor is a connection that is not
// one of the node's volume mounts (type fuse.saddlebag, source
// "saddlebag:<id>", mount point <FUSE directory>/<id>).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/internal/procstat"
)

// DefaultGrace is how long a node process may linger as a zombie before
// the keeper aborts its unparked connections (and as long again before
// the parked ones).
const DefaultGrace = 5 * time.Second

// fuseConnectionsDir is where fusectl is (or gets) mounted.
const fuseConnectionsDir = "/sys/fs/fuse/connections"

// nodeProc is a node process the keeper watches.
type nodeProc struct {
	pid     int
	start   uint64 // start time (procstat.Stat.StartTime): tells a reused pid apart
	fuseDir string

	zombieSince time.Time
	stage       int // what is aborted: 1 unparked, 2 parked with requests waiting, 3 every one
	warned      bool
}

// procState is what the watch reads of a process.
type procState struct {
	start   uint64
	state   byte // R, S, D, Z, ...
	threads int
	killed  bool // SIGKILL pending on the group leader (SigPnd)
}

// stuck reports whether the process was killed and cannot finish dying:
// its leader is a zombie while another thread lives on, or the leader
// itself waits in D state with SIGKILL pending (which thread of a Go
// process makes the syscall that hangs is chance). A process blocked in
// D state that nobody killed is alive, and never stuck.
func (ps procState) stuck() bool {
	return (ps.state == 'Z' && ps.threads > 1) || (ps.state == 'D' && ps.killed)
}

// readProc reads pid's start time, state and thread count; an error
// means it is gone (reaped).
func readProc(pid int) (procState, error) {
	var ps procState
	st, err := procstat.Read(pid)
	if err != nil {
		return ps, err
	}
	ps.start = st.StartTime
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, err
	}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "State":
			if v != "" {
				ps.state = v[0]
			}
		case "Threads":
			ps.threads, _ = strconv.Atoi(v)
		case "SigPnd":
			// A fatal signal is queued on every thread: bit 8 is SIGKILL.
			if mask, err := strconv.ParseUint(v, 16, 64); err == nil {
				ps.killed = mask&(1<<(unix.SIGKILL-1)) != 0
			}
		}
	}
	return ps, nil
}

// track starts (or goes on) watching the process pid, which named
// fuseDir as its FUSE directory.
//
// pid is the peer's SO_PEERCRED pid as the keeper's pid namespace sees
// it: 0 when the node process is not visible there (the keeper in a
// container's own pid namespace, e.g. docker without pid_mode = "host",
// the node outside it). Such a node can be kept for, but never freed
// should it get stuck exiting; that is logged at Error (once per FUSE
// directory and cause), as is a pid whose /proc entry cannot be read
// (/proc of another pid namespace), rather than silently watching
// nothing.
func (k *Keeper) track(pid int, fuseDir string) {
	if fuseDir == "" || !filepath.IsAbs(fuseDir) {
		return
	}
	fuseDir = filepath.Clean(fuseDir)
	if pid <= 0 {
		k.unwatchable(fuseDir, "pid 0",
			"cannot watch the node process serving this FUSE directory, so cannot free it should it get stuck exiting: "+
				"its pid is not visible in the keeper's pid namespace (the socket's peer credentials report pid 0); "+
				"run the keeper in the host's pid namespace (docker: pid_mode = \"host\", see jobs/docker/saddlebag-keeper.nomad.hcl)",
			"pid", pid)
		return
	}
	ps, err := readProc(pid)
	if err != nil {
		k.unwatchable(fuseDir, "proc",
			"cannot watch the node process serving this FUSE directory, so cannot free it should it get stuck exiting: "+
				"its /proc entry cannot be read (the keeper's /proc is not of its pid namespace, or the keeper may not read it)",
			"pid", pid, "error", err)
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.unwatched, fuseDir)
	if p := k.procs[pid]; p != nil && p.start == ps.start && p.fuseDir == fuseDir {
		return
	}
	// Only check changes a nodeProc: replace, never edit.
	k.procs[pid] = &nodeProc{pid: pid, start: ps.start, fuseDir: fuseDir}
	k.log.Info("watching node process: it is freed should it get stuck exiting", "pid", pid, "fuse_dir", fuseDir)
}

// unwatchable logs at Error, once per FUSE directory and cause (again
// after that directory was watched), why a node process that named
// fuseDir cannot be watched.
func (k *Keeper) unwatchable(fuseDir, cause, msg string, args ...any) {
	k.mu.Lock()
	logged := k.unwatched[fuseDir] == cause
	k.unwatched[fuseDir] = cause
	k.mu.Unlock()
	if !logged {
		k.log.Error(msg, append([]any{"fuse_dir", fuseDir}, args...)...)
	}
}

// checkFusectl logs at Error, at start, when fusectl cannot be reached:
// the keeper could not abort a stuck node's FUSE connections (a keeper in
// a container that may not mount it: docker without privileged = true).
func (k *Keeper) checkFusectl() {
	if err := mountFusectl(); err != nil {
		k.log.Error("FUSE connections cannot be aborted from here, so a node process stuck exiting could not be freed: "+
			"the keeper needs fusectl at "+fuseConnectionsDir+" (root on the host, or a privileged container)", "error", err)
	}
}

// watch checks the watched node processes every pollInterval until ctx
// ends.
func (k *Keeper) watch(ctx context.Context) {
	t := time.NewTicker(k.pollInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			k.check(time.Now())
		}
	}
}

func (k *Keeper) pollInterval() time.Duration {
	if k.Poll > 0 {
		return k.Poll
	}
	return 500 * time.Millisecond
}

func (k *Keeper) grace() time.Duration {
	if k.Grace > 0 {
		return k.Grace
	}
	return DefaultGrace
}

// check is one round of the watch. Only check changes a nodeProc.
func (k *Keeper) check(now time.Time) {
	k.checkMu.Lock()
	defer k.checkMu.Unlock()
	k.mu.Lock()
	procs := make([]*nodeProc, 0, len(k.procs))
	for _, p := range k.procs {
		procs = append(procs, p)
	}
	k.mu.Unlock()
	states := map[int]procState{}
	for _, p := range procs {
		ps, err := readProc(p.pid)
		if err != nil || ps.start != p.start {
			k.forget(p)
			continue
		}
		states[p.pid] = ps
	}
	for _, p := range procs {
		ps, ok := states[p.pid]
		if !ok {
			continue
		}
		// Alive (D state included, unless killed), or a zombie whose
		// every thread has exited (its descriptors are closed; it only
		// waits to be reaped): nothing to free.
		if !ps.stuck() {
			p.zombieSince, p.warned = time.Time{}, false
			continue
		}
		if p.zombieSince.IsZero() {
			p.zombieSince = now
			k.log.Warn("node process is stuck exiting: killed, a thread of it still waits in the kernel",
				"pid", p.pid, "state", string(ps.state), "threads", ps.threads, "grace", k.grace().String())
			continue
		}
		// Another live node process on the same FUSE directory may have
		// adopted or staged those volumes since: touch nothing.
		if other := k.liveSibling(p, procs, states); other != 0 {
			if !p.warned {
				p.warned = true
				k.log.Warn("node process is stuck exiting, but another node process serves its FUSE directory: aborting nothing",
					"pid", p.pid, "other_pid", other)
			}
			continue
		}
		lingered := now.Sub(p.zombieSince)
		for stage := p.stage + 1; stage <= 3 && lingered >= time.Duration(stage)*k.grace(); stage++ {
			p.stage = stage
			k.abortNode(p, stage, lingered)
		}
	}
}

func (k *Keeper) liveSibling(p *nodeProc, procs []*nodeProc, states map[int]procState) int {
	for _, o := range procs {
		if o == p || o.fuseDir != p.fuseDir {
			continue
		}
		if s, ok := states[o.pid]; ok && s.state != 'Z' && !s.stuck() {
			return o.pid
		}
	}
	return 0
}

func (k *Keeper) forget(p *nodeProc) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.procs[p.pid] == p {
		delete(k.procs, p.pid)
		if p.stage > 0 {
			k.log.Info("stuck node process has exited", "pid", p.pid)
		}
	}
}

// volumeMount is one of a node's FUSE volume mounts.
type volumeMount struct {
	id   string
	conn uint32
}

// nodeMounts lists the FUSE mounts of p's volumes, as p's mount
// namespace shows them (through a thread still alive: the zombie leader
// has none).
func nodeMounts(p *nodeProc) ([]volumeMount, error) {
	var infos []*mountinfo.Info
	var err error = errors.New("no live thread")
	if tids, derr := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.pid)); derr == nil {
		for _, t := range tids {
			var f *os.File
			if f, err = os.Open(fmt.Sprintf("/proc/%d/task/%s/mountinfo", p.pid, t.Name())); err != nil {
				continue
			}
			infos, err = mountinfo.GetMountsFromReader(f, nil)
			f.Close()
			if err == nil {
				break
			}
		}
	}
	if err != nil {
		// The keeper shares the node's mount namespace when both run on
		// the host (raw_exec).
		if infos, err = mountinfo.GetMounts(nil); err != nil {
			return nil, err
		}
	}
	var out []volumeMount
	for _, m := range infos {
		id := filepath.Base(m.Mountpoint)
		if m.FSType != "fuse.saddlebag" || m.Major != 0 || filepath.Dir(m.Mountpoint) != p.fuseDir ||
			m.Source != "saddlebag:"+id {
			continue
		}
		out = append(out, volumeMount{id: id, conn: uint32(m.Minor)})
	}
	return out, nil
}

// abortNode aborts connections of p's volumes: at stage 1 the ones not
// parked here, at stage 2 the parked ones with requests waiting (the
// thread can only be waiting on one of those), at stage 3 every parked
// one left. It drops the parked entries it aborts.
func (k *Keeper) abortNode(p *nodeProc, stage int, lingered time.Duration) {
	mounts, err := nodeMounts(p)
	if err != nil {
		k.log.Error("node process is stuck exiting, but its FUSE mounts cannot be read", "pid", p.pid, "error", err)
		return
	}
	for _, m := range mounts {
		if stage == 2 && !connWaiting(m.conn) {
			continue
		}
		k.mu.Lock()
		e, parked := k.entries[m.id]
		if parked != (stage > 1) {
			k.mu.Unlock()
			continue
		}
		if parked {
			// Its connection is over: nothing left to adopt.
			delete(k.entries, m.id)
		}
		k.mu.Unlock()
		reason := "the node process has been a zombie for " + lingered.Round(time.Millisecond).String() +
			" with a thread waiting in the kernel; the connection was not parked here, so nothing else could ever serve it"
		if parked {
			reason = "the node process still lingers as a zombie after " + lingered.Round(time.Millisecond).String() +
				" with a thread waiting in the kernel, its unparked connections aborted; a parked volume cannot be adopted while it lingers (Nomad starts no successor), so its tasks see I/O errors and it must be staged again"
		}
		if err := k.abortConn(m.conn); err != nil {
			k.log.Error("cannot abort the FUSE connection of a stuck node process", "pid", p.pid, "volume_id", m.id,
				"connection", m.conn, "parked", parked, "reason", reason, "error", err)
		} else {
			k.log.Error("aborted the FUSE connection of a stuck node process: its tasks see I/O errors", "pid", p.pid,
				"volume_id", m.id, "connection", m.conn, "parked", parked, "reason", reason)
		}
		if parked {
			e.File.Close()
		}
	}
}

// connWaiting reports whether FUSE connection id has requests waiting
// (or that cannot be told).
func connWaiting(id uint32) bool {
	if err := mountFusectl(); err != nil {
		return true
	}
	b, err := os.ReadFile(filepath.Join(fuseConnectionsDir, strconv.FormatUint(uint64(id), 10), "waiting"))
	if err != nil {
		return true
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return err != nil || n > 0
}

// mountFusectl mounts fusectl at fuseConnectionsDir unless it is there.
func mountFusectl() error {
	var st unix.Statfs_t
	if err := unix.Statfs(fuseConnectionsDir, &st); err == nil && st.Type == fusectlMagic {
		return nil
	}
	if err := unix.Mount("fusectl", fuseConnectionsDir, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount fusectl at %s: %w", fuseConnectionsDir, err)
	}
	return nil
}

// fusectlMagic is FUSE_CTL_SUPER_MAGIC.
const fusectlMagic = 0x65735543

// abortFUSEConnection writes 1 to the abort file of FUSE connection id,
// mounting fusectl first if needed (replication/frontend/fuse.AbortConnection;
// repeated so that the keeper stays small).
func abortFUSEConnection(id uint32) error {
	if err := mountFusectl(); err != nil {
		return err
	}
	abort := filepath.Join(fuseConnectionsDir, strconv.FormatUint(uint64(id), 10), "abort")
	f, err := os.OpenFile(abort, os.O_WRONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil // already gone
	}
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString("1")
	return err
}
