package fuse

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"
	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/replication/internal/replicatest"
)

// fileDevice is a Device over a plain file, each write slowed by delay
// so that requests are in flight when the server is killed.
type fileDevice struct {
	f     *os.File
	size  int64
	delay time.Duration
}

func (d *fileDevice) Size() int64 { return d.size }
func (d *fileDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	_, err := d.f.ReadAt(p, off)
	return err
}
func (d *fileDevice) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	time.Sleep(d.delay)
	_, err := d.f.WriteAt(p, off)
	return err
}
func (d *fileDevice) Flush(context.Context) error              { return d.f.Sync() }
func (d *fileDevice) Trim(context.Context, int64, int64) error { return nil }

const relayHelperEnv = "SADDLEBAG_FUSE_RELAY_HELPER"

// TestFUSERelayHelper is the server process of
// TestFUSEHandoffAcrossProcesses, run only as its child: it serves
// SADDLEBAG_FUSE_RELAY_BACKING at SADDLEBAG_FUSE_RELAY_DIR, mounting
// (mode "mount": the descriptor and INIT go to the parent over fd 3) or
// adopting the descriptor at fd 4 (mode "adopt"), until SIGTERM, when it
// hands the connection over and exits.
func TestFUSERelayHelper(t *testing.T) {
	mode := os.Getenv(relayHelperEnv)
	if mode == "" {
		t.Skip("only run as TestFUSEHandoffAcrossProcesses's child")
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if mode == "write" {
		relayWriters(t, term)
		return
	}
	ctl := os.NewFile(3, "ctl")
	bf, err := os.OpenFile(os.Getenv("SADDLEBAG_FUSE_RELAY_BACKING"), os.O_RDWR, 0)
	must.NoError(t, err)
	st, err := bf.Stat()
	must.NoError(t, err)
	dev := &fileDevice{f: bf, size: st.Size(), delay: 2 * time.Millisecond}
	cfg := Config{Dir: os.Getenv("SADDLEBAG_FUSE_RELAY_DIR"), Name: "vol", HungTimeout: -1,
		Log: hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Info})}
	var m *Mount
	switch mode {
	case "mount":
		m, err = NewHandoff(context.Background(), dev, cfg)
		must.NoError(t, err)
		conn, err := m.Conn()
		must.NoError(t, err)
		rc, err := conn.Dev.SyscallConn()
		must.NoError(t, err)
		must.NoError(t, rc.Control(func(fd uintptr) {
			err = unix.Sendmsg(int(ctl.Fd()), []byte(hex.EncodeToString(conn.Init)), unix.UnixRights(int(fd)), nil, 0)
		}))
		must.NoError(t, err)
	case "adopt":
		init, err := hex.DecodeString(os.Getenv("SADDLEBAG_FUSE_RELAY_INIT"))
		must.NoError(t, err)
		m, err = Adopt(context.Background(), dev, cfg, Conn{Dev: os.NewFile(4, "/dev/fuse"), Init: init})
		must.NoError(t, err)
		_, err = ctl.Write([]byte("ready"))
		must.NoError(t, err)
	}
	<-term
	must.NoError(t, m.HandOver(5*time.Second))
	_, _ = ctl.Write([]byte("handed"))
}

// relayWriters is the writer process: writers goroutines each fsync
// records into its own slots of the FUSE file until SIGTERM, printing
// "ack slot seq latency_ns" per acknowledged record and any error.
func relayWriters(t *testing.T, term chan os.Signal) {
	var writers, slots int
	_, err := fmt.Sscanf(os.Getenv("SADDLEBAG_FUSE_RELAY_WRITERS"), "%d,%d", &writers, &slots)
	must.NoError(t, err)
	file := os.Getenv("SADDLEBAG_FUSE_RELAY_FILE")
	var stop atomic.Bool
	var wg sync.WaitGroup
	var out sync.Mutex
	for w := range writers {
		wg.Go(func() {
			fd, err := unix.Open(file, unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
			if err != nil {
				out.Lock()
				fmt.Printf("error open: %v\n", err)
				out.Unlock()
				return
			}
			defer unix.Close(fd)
			buf := alignedBuf(4096)
			for seq := uint64(1); !stop.Load(); seq++ {
				slot := w*slots + int(seq%uint64(slots))
				binary.LittleEndian.PutUint64(buf, seq)
				t0 := time.Now()
				_, err := unix.Pwrite(fd, buf, int64(slot)*4096)
				if err == nil {
					err = unix.Fsync(fd)
				}
				out.Lock()
				if err != nil {
					fmt.Printf("error seq %d slot %d: %v\n", seq, slot, err)
				} else {
					fmt.Printf("ack %d %d %d\n", slot, seq, time.Since(t0))
				}
				out.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	<-term
	stop.Store(true)
	wg.Wait()
}

// TestFUSEHandoffAcrossProcesses: writers fsync records into a FUSE
// file served by a child process while the child is SIGKILLed (a crash,
// with requests read and unanswered) and another one takes over, and
// then stopped with SIGTERM (a graceful handover) for a third. The test
// process holds the descriptor in between, as the keeper does. Every
// write and fsync must succeed, and every acknowledged record be in the
// backing file.
func TestFUSEHandoffAcrossProcesses(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("FUSE tests mount file systems and must run as root")
	}
	const size = 16 << 20
	dir := filepath.Join(t.TempDir(), "mnt")
	backing := filepath.Join(t.TempDir(), "backing")
	must.NoError(t, os.WriteFile(backing, nil, 0o600))
	must.NoError(t, os.Truncate(backing, size))

	var kept *os.File // the keeper's copy
	var connID uint32
	var init []byte
	var mu sync.Mutex
	var children []*exec.Cmd
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		// Abort first: a writer blocked on a server that is gone never
		// ends on SIGKILL, and waiting for it would hang the test binary.
		if connID != 0 {
			_ = AbortConnection(connID)
		}
		for _, c := range children {
			if c.ProcessState == nil {
				_ = c.Process.Kill()
				_ = c.Wait()
			}
		}
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		if kept != nil {
			kept.Close()
		}
	})

	// start runs a helper in mode; it returns the helper and its end of
	// the control socket.
	start := func(mode string) (*exec.Cmd, *os.File) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		must.NoError(t, err)
		ours, theirs := os.NewFile(uintptr(fds[0]), "ctl"), os.NewFile(uintptr(fds[1]), "ctl-child")
		cmd := exec.Command(os.Args[0], "-test.run=^TestFUSERelayHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), relayHelperEnv+"="+mode, "SADDLEBAG_FUSE_RELAY_BACKING="+backing,
			"SADDLEBAG_FUSE_RELAY_DIR="+dir, "SADDLEBAG_FUSE_RELAY_INIT="+hex.EncodeToString(init))
		cmd.ExtraFiles = []*os.File{theirs}
		if mode == "adopt" {
			cmd.ExtraFiles = append(cmd.ExtraFiles, kept)
		}
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		must.NoError(t, cmd.Start())
		theirs.Close()
		mu.Lock()
		children = append(children, cmd)
		mu.Unlock()
		return cmd, ours
	}
	readCtl := func(f *os.File) (string, *os.File) {
		buf := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(4))
		rc, err := f.SyscallConn()
		must.NoError(t, err)
		var n, oobn int
		var rerr error
		must.NoError(t, rc.Control(func(fd uintptr) { n, oobn, _, _, rerr = unix.Recvmsg(int(fd), buf, oob, 0) }))
		must.NoError(t, rerr)
		var got *os.File
		if oobn > 0 {
			cms, err := unix.ParseSocketControlMessage(oob[:oobn])
			must.NoError(t, err)
			fds, err := unix.ParseUnixRights(&cms[0])
			must.NoError(t, err)
			got = os.NewFile(uintptr(fds[0]), "/dev/fuse")
		}
		return string(buf[:n]), got
	}

	first, ctl := start("mount")
	msg, f := readCtl(ctl)
	must.NotNil(t, f, must.Sprint("the first server sent no descriptor"))
	kept = f
	var st unix.Stat_t
	must.NoError(t, unix.Stat(dir, &st))
	connID = unix.Minor(st.Dev)
	init, err := hex.DecodeString(msg)
	must.NoError(t, err)
	must.Eq(t, uint32(26), binary.LittleEndian.Uint32(init[4:8]), must.Sprint("INIT opcode"))

	// Writers, in a process of their own (a process holding a FUSE
	// file flushes it at every exec, which would wait on a dead server):
	// each owns a slice of 4 KiB records, writes the next sequence number
	// into one and fsyncs, and reports each acknowledgement.
	const writers, slots = 4, 256
	acked := make([]atomic.Uint64, writers*slots)
	var maxLatency atomic.Int64
	wcmd := exec.Command(os.Args[0], "-test.run=^TestFUSERelayHelper$", "-test.count=1")
	wcmd.Env = append(os.Environ(), relayHelperEnv+"=write", "SADDLEBAG_FUSE_RELAY_FILE="+filepath.Join(dir, "vol"),
		fmt.Sprintf("SADDLEBAG_FUSE_RELAY_WRITERS=%d,%d", writers, slots))
	wcmd.Stderr = os.Stderr
	wout, err := wcmd.StdoutPipe()
	must.NoError(t, err)
	must.NoError(t, wcmd.Start())
	mu.Lock()
	children = append(children, wcmd)
	mu.Unlock()
	var werrs []string
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(wout)
		for sc.Scan() {
			var slot int
			var seq uint64
			var lat int64
			if n, _ := fmt.Sscanf(sc.Text(), "ack %d %d %d", &slot, &seq, &lat); n == 3 {
				acked[slot].Store(seq)
				maxLatency.Store(max(maxLatency.Load(), lat))
				continue
			}
			if strings.HasPrefix(sc.Text(), "error") {
				werrs = append(werrs, sc.Text())
			}
		}
	}()
	progress := func() uint64 {
		var s uint64
		for i := range acked {
			s += acked[i].Load()
		}
		return s
	}
	must.Wait(t, waitUntil(30*time.Second, func() bool { return progress() > 0 }), must.Sprint("no write completed through the first server"))

	// A crash: SIGKILL with writes in flight.
	t0 := time.Now()
	must.NoError(t, first.Process.Kill())
	_ = first.Wait()
	before := progress()
	time.Sleep(300 * time.Millisecond)
	must.Eq(t, before, progress(), must.Sprint("writes completed while no server ran"))
	second, ctl2 := start("adopt")
	msg, _ = readCtl(ctl2)
	must.Eq(t, "ready", msg)
	must.Wait(t, waitUntil(10*time.Second, func() bool { return progress() > before }), must.Sprint("writes never resumed after the crash"))
	crashStall := time.Since(t0)

	// A graceful handover.
	time.Sleep(300 * time.Millisecond)
	t1 := time.Now()
	must.NoError(t, second.Process.Signal(syscall.SIGTERM))
	msg, _ = readCtl(ctl2)
	must.Eq(t, "handed", msg)
	must.NoError(t, second.Wait())
	third, ctl3 := start("adopt")
	msg, _ = readCtl(ctl3)
	must.Eq(t, "ready", msg)
	mid := progress()
	must.Wait(t, waitUntil(10*time.Second, func() bool { return progress() > mid }), must.Sprint("writes never resumed after the handover"))
	handoverStall := time.Since(t1)
	time.Sleep(300 * time.Millisecond)
	must.NoError(t, wcmd.Process.Signal(syscall.SIGTERM))
	<-scanned
	must.NoError(t, wcmd.Wait())
	for _, e := range werrs {
		t.Errorf("writer: %s", e)
	}
	fmt.Printf("fuse_handoff_crash_resume_seconds %.3f\nfuse_handoff_graceful_resume_seconds %.3f\nfuse_handoff_max_write_latency_seconds %.3f\n",
		crashStall.Seconds(), handoverStall.Seconds(), time.Duration(maxLatency.Load()).Seconds())

	// Every acknowledged record is in the backing file.
	data, err := os.ReadFile(backing)
	must.NoError(t, err)
	for slot := range acked {
		want := acked[slot].Load()
		if want == 0 {
			continue
		}
		got := binary.LittleEndian.Uint64(data[slot*4096:])
		must.Eq(t, want, got, must.Sprintf("slot %d", slot))
	}

	must.NoError(t, third.Process.Signal(syscall.SIGTERM))
	msg, _ = readCtl(ctl3)
	must.Eq(t, "handed", msg)
	must.NoError(t, third.Wait())
	// Nobody serves now; the mount goes with a lazy unmount and the
	// last descriptor.
	must.NoError(t, unix.Unmount(dir, unix.MNT_DETACH))
	kept.Close()
	kept = nil
}

func waitUntil(d time.Duration, f func() bool) *wait.Constraint {
	return wait.InitialSuccess(wait.BoolFunc(f), wait.Timeout(d), wait.Gap(5*time.Millisecond))
}

// TestFUSEHandoffLargeIO: through the relay, 1 MiB direct writes and
// reads (the largest requests the kernel sends) and fsyncs reach the
// Device intact, and Unmount ends the connection cleanly.
func TestFUSEHandoffLargeIO(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("FUSE tests mount file systems and must run as root")
	}
	dev := &countingDevice{Device: replicatest.NewMemDevice(make([]byte, 16<<20))}
	m, err := NewHandoff(context.Background(), dev, Config{Dir: t.TempDir(), Name: "vol", Log: replicatest.Logger(t)})
	must.NoError(t, err)
	t.Cleanup(func() { must.NoError(t, m.Close()) })
	f, err := os.OpenFile(m.Path(), os.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	must.NoError(t, err)
	buf, got := alignedBuf(1<<20), alignedBuf(1<<20)
	for i := 0; i < 8; i++ {
		for j := range buf {
			buf[j] = byte(i*31 + j*7)
		}
		_, err = f.WriteAt(buf, int64(i)<<20)
		must.NoError(t, err)
		must.NoError(t, f.Sync())
		_, err = f.ReadAt(got, int64(i)<<20)
		must.NoError(t, err)
		must.Eq(t, buf, got)
	}
	must.Greater(t, int64(0), dev.flushes.Load())
	must.NoError(t, f.Close())
	must.NoError(t, m.Unmount())
	select {
	case <-m.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the server did not stop after Unmount")
	}
}
