package sim

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/replication/internal/faultproxy"
	"github.com/saddlebag/saddlebag/replication/replica"
	"github.com/saddlebag/saddlebag/replication/sim/crashfs"
)

// node is one replica server and its disk, named by its proxy's address.
// In process (the default) its Store keeps its files on a crashfs.FS; with
// Config.Processes it is a real process on real files (dir on a tmpfs of
// its own when running as root).
type node struct {
	i     int
	dir   string
	proxy *faultproxy.Proxy
	up    bool

	fs     *crashfs.FS // in process
	cancel context.CancelFunc
	done   chan struct{}

	cmd   *exec.Cmd // a real process
	tmpfs bool      // dir is a tmpfs mounted for it

	cut, delayed, diskFull bool
	held                   atomic.Int32 // holds in progress
	boots                  atomic.Int64 // power losses so far: its host's boot id
	wipedAt                atomic.Int64 // generations below this one were lost in a wipe
	trapped                bool         // a persistcrash trap is armed
	cutByTrap              atomic.Bool  // the trap fired: the node is powered off
}

func (n *node) addr() string { return n.proxy.Addr() }

// impaired reports whether a fault keeps n from serving.
func (n *node) impaired() bool {
	return !n.up || n.cut || n.diskFull || n.held.Load() > 0 || n.trapped || n.cutByTrap.Load()
}

// tmpfsSize is each process replica's tmpfs: room for the volume, its
// metadata and bitmaps, and slack.
func (s *simulation) tmpfsSize() int64 { return s.cfg.Size + 8<<20 }

func (s *simulation) newNode(i int, px *faultproxy.Proxy) (*node, error) {
	n := &node{i: i, proxy: px}
	if !s.cfg.Processes {
		n.dir, n.fs = fmt.Sprintf("/sim/node%d", i), crashfs.New()
		return n, nil
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("saddlebag-sim-%d-node%d-", s.cfg.Seed, i))
	if err != nil {
		return nil, err
	}
	n.dir = dir
	if os.Geteuid() == 0 {
		// Without the right to mount (a container), real files on the
		// temp dir still do, only disk full is then not simulated.
		out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", s.tmpfsSize()), "tmpfs", dir).CombinedOutput()
		if err != nil {
			s.note("no tmpfs for node%d (disk full not simulated): %v: %s", i, err, strings.TrimSpace(string(out)))
		}
		n.tmpfs = err == nil
	}
	return n, nil
}

// startNode starts n's replica server on a new port behind its proxy.
func (s *simulation) startNode(n *node) error {
	if n.fs == nil {
		return s.startProcess(n)
	}
	n.fs.Up()
	store, err := replica.OpenStoreWith(n.dir, s.log, replica.StoreOptions{Files: n.fs,
		BootID: fmt.Sprintf("sim-node%d-boot%d", n.i, n.boots.Load())})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := replica.NewServer(store, s.log.Named(fmt.Sprintf("node%d", n.i)))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx, ln)
	}()
	n.proxy.SetTarget(ln.Addr().String())
	n.cancel, n.done, n.up = cancel, done, true
	return nil
}

// holds reports whether n is a member of rec's set and was not wiped
// since rec's generation was recorded: it holds that generation's data.
func (n *node) holds(rec *inSyncRecord) bool {
	return slices.Contains(rec.Replicas, n.addr()) && n.wipedAt.Load() <= int64(rec.Gen)
}

// stopNode ends n's in-process server; the caller has already killed its
// handles (Kill or PowerLoss), so nothing it does after this persists.
func (s *simulation) stopNode(n *node) {
	if !n.up || n.fs == nil {
		return
	}
	n.proxy.SetTarget("")
	n.cancel()
	<-n.done
	n.up = false
}

// killNode SIGKILLs n: a real process is killed; in process, its file
// handles die at once and its server stops.
func (s *simulation) killNode(n *node) {
	if n.fs != nil {
		n.fs.Kill()
		s.stopNode(n)
		return
	}
	if n.up {
		n.proxy.SetTarget("")
		_ = n.cmd.Process.Kill()
		_ = n.cmd.Wait()
		n.up = false
	}
}

// wipeNode deletes the replica's data (n is down): a new, empty disk.
func (s *simulation) wipeNode(n *node) error {
	if r := s.coord.newestRecord(); r != nil {
		n.wipedAt.Store(int64(r.Gen) + 1) // holds none of the generations recorded so far
	} else {
		n.wipedAt.Store(1)
	}
	if n.fs != nil {
		n.fs.Wipe(n.dir)
		return nil
	}
	return os.RemoveAll(filepath.Join(n.dir, volume))
}

// setDiskFull makes n's disk full, leaving room bytes, or lifts that.
func (s *simulation) setDiskFull(n *node, full bool, room int64) error {
	if n.fs != nil {
		if full {
			n.fs.SetQuota(n.fs.Used() + room)
		} else {
			n.fs.SetQuota(0)
		}
		return nil
	}
	if !n.tmpfs {
		return nil // not root: no tmpfs to fill
	}
	if !full {
		return remount(n.dir, s.tmpfsSize())
	}
	// Writes go on meanwhile, and tmpfs refuses to shrink below what is
	// used: measure and retry, with a growing margin.
	var err error
	for margin := int64(0); margin <= 1<<20; margin = margin*4 + 64<<10 {
		var st syscall.Statfs_t
		if err = syscall.Statfs(n.dir, &st); err != nil {
			return err
		}
		used := int64(st.Blocks-st.Bfree) * st.Bsize
		if err = remount(n.dir, used+room+margin); err == nil {
			return nil
		}
	}
	return err
}

func remount(dir string, size int64) error {
	size = (size + 4095) &^ 4095
	if out, err := exec.Command("mount", "-o", fmt.Sprintf("remount,size=%d", size), dir).CombinedOutput(); err != nil {
		return fmt.Errorf("remount %s: %v: %s", dir, err, out)
	}
	return nil
}

// readData returns the replica's data file as a reader would see it.
func (n *node) readData() ([]byte, error) {
	path := filepath.Join(n.dir, volume, "data")
	if n.fs != nil {
		return n.fs.ReadFile(path)
	}
	return os.ReadFile(path)
}

// cleanupNode removes what newNode made (n is down).
func (s *simulation) cleanupNode(n *node) {
	if n.fs != nil {
		return
	}
	if n.tmpfs {
		_ = exec.Command("umount", "-l", n.dir).Run()
	}
	_ = os.RemoveAll(n.dir)
}

// replicaEnv names the data directory of a replica process: a test binary
// started with it serves replicas instead of running tests (TestMain).
const replicaEnv = "SADDLEBAG_SIM_REPLICA_DIR"

func (s *simulation) startProcess(n *node) error {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), replicaEnv+"="+n.dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if s.cfg.Log != nil {
		cmd.Stderr = os.Stderr
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				addr <- a
			}
		}
	}()
	select {
	case a := <-addr:
		n.proxy.SetTarget(a)
		n.cmd, n.up = cmd, true
		return nil
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("replica process for %s did not start", n.dir)
	}
}

// replicaMain is a replica process: a replica.Server over a real
// Store in dir, until killed.
func replicaMain(dir string) int {
	log := hclog.NewNullLogger()
	if v, _ := strconv.ParseBool(os.Getenv("TORTURE_LOG")); v {
		log = hclog.New(&hclog.LoggerOptions{Name: "replica", Level: hclog.Debug, Output: os.Stderr})
	}
	store, err := replica.OpenStore(dir, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("listening %s\n", ln.Addr())
	_ = replica.NewServer(store, log).Serve(context.Background(), ln)
	return 0
}
