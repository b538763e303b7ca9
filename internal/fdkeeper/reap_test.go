package fdkeeper

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/moby/sys/mountinfo"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/internal/procstat"
	"github.com/saddlebag/saddlebag/plugin/mount"
	"github.com/saddlebag/saddlebag/replication/frontend/fuse"
)

const stuckHelperEnv = "SADDLEBAG_KEEPER_STUCK_HELPER"

// serveHelperEnv, set to a socket path, makes the test binary a keeper.
const serveHelperEnv = "SADDLEBAG_KEEPER_SERVE_HELPER"

// blockingDevice is a Device over a file whose requests block, once
// told to, until the process ends (a replica set gone quiet).
type blockingDevice struct {
	f       *os.File
	size    int64
	mu      sync.Mutex
	blocked bool
}

func (d *blockingDevice) wait() {
	d.mu.Lock()
	b := d.blocked
	d.mu.Unlock()
	if b {
		select {}
	}
}
func (d *blockingDevice) Size() int64 { return d.size }
func (d *blockingDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	d.wait()
	_, err := d.f.ReadAt(p, off)
	return err
}
func (d *blockingDevice) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	d.wait()
	_, err := d.f.WriteAt(p, off)
	return err
}
func (d *blockingDevice) Flush(context.Context) error              { d.wait(); return d.f.Sync() }
func (d *blockingDevice) Trim(context.Context, int64, int64) error { return nil }

// The child process of the stuck-node tests (TestMain runs it when
// $SADDLEBAG_KEEPER_STUCK_HELPER is set). In dir ($SADDLEBAG_KEEPER_STUCK_DIR)
// it serves the volumes "stuck" and "idle" as the node does with a keeper
// (dir/fuse/<id>/<id>, relayed), registers with the keeper at
// $SADDLEBAG_KEEPER_STUCK_SOCK with dir/fuse as its FUSE directory and
// parks the volumes listed in $SADDLEBAG_KEEPER_STUCK_PARK; then it
// makes ext4 on a loop device over "stuck", makes that volume block and
// mounts the file system: mount(2) waits for I/O only this process
// would answer. With $SADDLEBAG_KEEPER_STUCK_HELPER "leader" the main
// thread (the group leader) makes that call, with "thread" another one:
// in a Go node process either can happen.
func init() {
	if os.Getenv(stuckHelperEnv) != "" {
		runtime.LockOSThread() // the main goroutine stays on the leader
	}
}

func TestMain(m *testing.M) {
	if mode := os.Getenv(stuckHelperEnv); mode != "" {
		stuckNodeHelper(mode)
		return
	}
	if sock := os.Getenv(serveHelperEnv); sock != "" {
		// A keeper alone (TestKeeperSaysWhyItCannotWatch runs it in a
		// pid namespace of its own), logging to stderr.
		k := New(hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Info}))
		if err := k.Serve(context.Background(), sock); err != nil {
			fmt.Fprintln(os.Stderr, "keeper helper:", err)
			os.Exit(2)
		}
		return
	}
	os.Exit(m.Run())
}

func stuckNodeHelper(mode string) {
	check := func(err error, what string) {
		if err != nil {
			fmt.Fprintf(os.Stderr, "stuck-node helper: %s: %v\n", what, err)
			os.Exit(2)
		}
	}
	dir := os.Getenv("SADDLEBAG_KEEPER_STUCK_DIR")
	fuseDir := filepath.Join(dir, "fuse")
	park := strings.Split(os.Getenv("SADDLEBAG_KEEPER_STUCK_PARK"), ",")
	client := Client{Path: os.Getenv("SADDLEBAG_KEEPER_STUCK_SOCK"), FUSEDir: fuseDir}
	log := hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Warn})
	devs := map[string]*blockingDevice{}
	mounts := map[string]*fuse.Mount{}
	for _, id := range []string{"stuck", "idle"} {
		bf, err := os.OpenFile(filepath.Join(dir, id+".img"), os.O_RDWR, 0)
		check(err, "open backing file")
		st, err := bf.Stat()
		check(err, "stat backing file")
		devs[id] = &blockingDevice{f: bf, size: st.Size()}
		m, err := fuse.NewHandoff(context.Background(), devs[id],
			fuse.Config{Dir: filepath.Join(fuseDir, id), Name: id, HungTimeout: -1, Log: log})
		check(err, "mount fuse")
		mounts[id] = m
		fmt.Printf("conn %s %d\n", id, m.Connection())
	}
	loop, err := mount.AttachLoop(mounts["stuck"].Path())
	check(err, "attach loop")
	out, err := exec.Command("mkfs.ext4", "-q", "-F", loop).CombinedOutput()
	check(err, "mkfs.ext4: "+string(out))
	lf, err := os.OpenFile(loop, os.O_RDWR, 0)
	check(err, "open loop")
	check(unix.IoctlSetInt(int(lf.Fd()), unix.BLKFLSBUF, 0), "flush loop buffers") // the mount must read through FUSE
	lf.Close()
	_, err = client.Names()
	check(err, "keeper names")
	for _, id := range park {
		if id == "" {
			continue
		}
		conn, err := mounts[id].Conn()
		check(err, "conn")
		check(client.Put(id, []byte(`{}`), conn.Dev), "park")
	}
	devs["stuck"].mu.Lock()
	devs["stuck"].blocked = true
	devs["stuck"].mu.Unlock()
	mountFS := func() {
		fmt.Println("mounting")
		err := unix.Mount(loop, filepath.Join(dir, "mnt"), "ext4", 0, "")
		fmt.Printf("mount returned: %v\n", err)
	}
	if mode == "leader" {
		mountFS()
	} else {
		go func() {
			runtime.LockOSThread() // not the main goroutine's thread
			mountFS()
		}()
	}
	select {}
}

// stuckNode is a running TestKeeperStuckNodeHelper and its keeper.
type stuckNode struct {
	dir    string
	k      *Keeper
	cmd    *exec.Cmd
	conns  map[string]uint32
	exited chan struct{}

	mu      sync.Mutex
	aborted []string // volume ids whose connection the keeper aborted
}

func (s *stuckNode) abortedIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.aborted)
}

// startStuckNode runs a keeper with grace and a helper node process
// parking park, and returns once the node waits in mount(2). Everything
// is cleaned up at the end of the test, whatever happened.
func startStuckNode(t *testing.T, grace time.Duration, park, thread string) *stuckNode {
	if os.Geteuid() != 0 {
		t.Skip("needs root (FUSE mounts, loop devices)")
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s: %v", p, err)
		}
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4")
	}
	s := &stuckNode{dir: t.TempDir(), conns: map[string]uint32{}, exited: make(chan struct{})}
	for _, id := range []string{"stuck", "idle"} {
		f, err := os.Create(filepath.Join(s.dir, id+".img"))
		must.NoError(t, err)
		must.NoError(t, f.Truncate(64<<20))
		f.Close()
	}
	must.NoError(t, os.Mkdir(filepath.Join(s.dir, "mnt"), 0o700))

	s.k = New(hclog.New(&hclog.LoggerOptions{Name: "keeper", Output: os.Stderr, Level: hclog.Info}))
	s.k.Grace, s.k.Poll = grace, 100*time.Millisecond
	s.k.abortConn = func(conn uint32) error {
		s.mu.Lock()
		for id, c := range s.conns {
			if c == conn {
				s.aborted = append(s.aborted, id)
			}
		}
		s.mu.Unlock()
		return abortFUSEConnection(conn)
	}
	sock := filepath.Join(s.dir, "keeper.sock")
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.k.Serve(ctx, sock) }()
	t.Cleanup(func() { cancel(); <-served; s.k.Close() })
	must.Wait(t, untilOK(func() bool { _, err := (Client{Path: sock}).Names(); return err == nil }))

	s.cmd = exec.Command(os.Args[0])
	s.cmd.Env = append(os.Environ(), stuckHelperEnv+"="+thread, "SADDLEBAG_KEEPER_STUCK_DIR="+s.dir,
		"SADDLEBAG_KEEPER_STUCK_SOCK="+sock, "SADDLEBAG_KEEPER_STUCK_PARK="+park)
	s.cmd.Stderr = os.Stderr
	stdout, err := s.cmd.StdoutPipe()
	must.NoError(t, err)
	must.NoError(t, s.cmd.Start())
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() { s.cleanup(t, false) })

	mounting := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			var id string
			var conn uint32
			switch {
			case strings.HasPrefix(line, "conn "):
				if _, err := fmt.Sscanf(line, "conn %s %d", &id, &conn); err == nil {
					s.mu.Lock()
					s.conns[id] = conn
					s.mu.Unlock()
				}
			case line == "mounting":
				close(mounting)
			}
		}
	}()
	select {
	case <-mounting:
	case <-s.exited:
		t.Fatal("the node process exited before mounting")
	case <-time.After(60 * time.Second):
		t.Fatal("the node process did not get to mount(2) in 60 s")
	}
	// Wait until a thread of it sleeps uninterruptibly (in mount(2)).
	must.Wait(t, untilOK(func() bool { return threadInD(s.cmd.Process.Pid) }))
	return s
}

// threadInD reports whether a thread of pid is in D state.
func threadInD(pid int) bool {
	tids, _ := procstat.Tasks(pid)
	for _, tid := range tids {
		if st, err := procstat.ReadTask(pid, tid); err == nil && st.State == 'D' {
			return true
		}
	}
	return false
}

// cleanup ends the node process and undoes what it set up: aborts the
// test's FUSE connections (so that nothing waits any more), unmounts the
// file system, detaches the loop device and unmounts the FUSE files.
// With check, it fails the test if anything is left.
func (s *stuckNode) cleanup(t *testing.T, check bool) {
	_ = s.cmd.Process.Kill()
	mounts := s.testMounts()
	for _, m := range mounts {
		if m.FSType == "fuse.saddlebag" {
			_ = abortFUSEConnection(uint32(m.Minor))
		}
	}
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		t.Errorf("the node process did not exit even with its connections aborted")
	}
	_ = unix.Unmount(filepath.Join(s.dir, "mnt"), unix.MNT_DETACH)
	for _, id := range []string{"stuck", "idle"} {
		if err := mount.DetachLoops(filepath.Join(s.dir, "fuse", id, id)); err != nil {
			t.Errorf("detach loop of %s: %v", id, err)
		}
	}
	for _, m := range slices.Backward(s.testMounts()) {
		_ = unix.Unmount(m.Mountpoint, unix.MNT_DETACH)
	}
	if !check {
		return
	}
	if left := s.testMounts(); len(left) > 0 {
		t.Errorf("mounts left: %v", left)
	}
	if left := s.testLoops(); len(left) > 0 {
		t.Errorf("loop devices left: %v", left)
	}
}

func (s *stuckNode) testMounts() []*mountinfo.Info {
	ms, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(s.dir))
	return ms
}

func (s *stuckNode) testLoops() []string {
	var out []string
	ents, _ := os.ReadDir("/sys/block")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "loop", "backing_file"))
		if err == nil && strings.HasPrefix(string(b), s.dir+"/") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestKeeperFreesStuckNode: a node process killed while mount(2) waits
// for I/O on its own FUSE file lingers, a zombie with a thread in D
// state, until the keeper aborts that connection; it then exits. Its
// volume that is not parked is aborted after one grace period, and the
// parked idle one spared (the process is gone by then); a parked volume
// the process is stuck on is aborted after a second grace period and
// dropped, the idle parked one still spared (no request waits on it).
func TestKeeperFreesStuckNode(t *testing.T) {
	const grace = time.Second
	for _, tc := range []struct {
		name, park, thread string
		wantNames          []string
	}{
		{name: "unparked, another thread stuck", park: "idle", thread: "thread", wantNames: []string{"idle"}},
		{name: "unparked, the leader stuck", park: "idle", thread: "leader", wantNames: []string{"idle"}},
		{name: "parked, another thread stuck", park: "stuck,idle", thread: "thread", wantNames: []string{"idle"}},
		{name: "parked, the leader stuck", park: "stuck,idle", thread: "leader", wantNames: []string{"idle"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startStuckNode(t, grace, tc.park, tc.thread)
			pid := s.cmd.Process.Pid
			killed := time.Now()
			must.NoError(t, s.cmd.Process.Signal(syscall.SIGKILL))
			// Without the keeper it would stay like this forever: a
			// zombie leader with the thread in D state, or the leader
			// itself in D state with SIGKILL pending.
			must.Wait(t, untilOK(func() bool {
				ps, err := readProc(pid)
				if tc.thread == "leader" {
					return err == nil && ps.state == 'D' && ps.killed
				}
				return err == nil && ps.state == 'Z' && ps.threads > 1
			}))
			limit := 2*grace + 10*time.Second
			select {
			case <-s.exited:
				t.Logf("node process reaped %v after SIGKILL", time.Since(killed).Round(time.Millisecond))
			case <-time.After(limit):
				t.Fatalf("the killed node process still lingers %v after SIGKILL", limit)
			}
			// The parked idle volume outlives the process, however long.
			time.Sleep(3 * grace)
			must.Eq(t, []string{"stuck"}, s.abortedIDs())
			must.Eq(t, tc.wantNames, s.k.names())
			s.cleanup(t, true)
		})
	}
}

// TestKeeperSparesLiveNode: a node process alive but blocked in mount(2)
// (in D state, for much longer than the grace period) is not dead: the
// keeper aborts nothing.
func TestKeeperSparesLiveNode(t *testing.T) {
	const grace = time.Second
	s := startStuckNode(t, grace, "idle", "leader")
	time.Sleep(4 * grace)
	select {
	case <-s.exited:
		t.Fatal("the node process exited")
	default:
	}
	must.True(t, threadInD(s.cmd.Process.Pid), must.Sprint("the node process no longer waits in mount(2)"))
	must.SliceEmpty(t, s.abortedIDs())
	must.Eq(t, []string{"idle"}, s.k.names())
	s.cleanup(t, true)
}
