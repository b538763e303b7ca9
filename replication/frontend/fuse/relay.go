package fuse

// A FUSE connection whose /dev/fuse descriptor can outlive the process
// serving it (issue 13). The kernel keeps a FUSE connection, and so the
// loop device and the file system above it, alive as long as any process
// holds its /dev/fuse descriptor; a descriptor keeper (internal/fdkeeper)
// holds a duplicate, and the next process takes it over.
//
// go-fuse can only serve a connection it initialised itself: NewServer
// reads the kernel's INIT request first. So go-fuse is given one end of
// a SOCK_SEQPACKET socket pair (the "/dev/fd/N" mount point) instead of
// /dev/fuse, and a relay copies each request (one kernel read, one
// message) from /dev/fuse to the socket and each reply back. The relay
// keeps a copy of the kernel's INIT request; a successor replays it to
// its own go-fuse server (whose INIT reply it drops: the kernel is
// initialised already) and then asks the kernel to resend every request
// the previous server read but never answered (FUSE_NOTIFY_RESEND, Linux
// 6.9). The relay also gives a graceful handover its one hard part: stop
// reading new requests (they wait in the kernel) and wait until every
// request read so far has been answered.
//
// The relay costs a copy of each request and reply through the socket;
// see README "Restarts and upgrades without I/O errors".

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/replication"
)

const (
	fuseOpInit        = 26
	fuseOpForget      = 2
	fuseOpBatchForget = 42
	fuseOpInterrupt   = 36
	fuseNotifyResend  = 7 // enum fuse_notify_code FUSE_NOTIFY_RESEND
	fuseRelayReaders  = 4
	fuseRelayBufSize  = fuseMaxWrite + 64<<10
	fuseRelaySockBuf  = 8 << 20
)

// ErrHandoff wraps failures to hand a FUSE connection over.
var ErrHandoff = errors.New("fuse handoff")

// Conn is what a successor needs to take a FUSE connection over: its
// /dev/fuse descriptor and the kernel's INIT request.
type Conn struct {
	Dev  *os.File
	Init []byte
}

// fuseRelay copies requests from /dev/fuse to go-fuse's socket and
// replies back.
type fuseRelay struct {
	dev *os.File // /dev/fuse, non-blocking: owns the descriptor
	// devFD is a duplicate read and written with poll(2) and plain
	// syscalls: Go's edge-triggered netpoller misses /dev/fuse wake-ups
	// (seen as a request waiting forever with every reader parked).
	devFD    int
	stopping atomic.Bool
	devOnce  sync.Once
	// sock is our end of the socket pair, blocking, used with plain
	// syscalls. Nothing here may wait in Go's netpoller: a process that
	// opens the volume file (os.OpenFile registers it with epoll, which
	// makes the kernel send FUSE_POLL and wait for the answer while it
	// holds the netpoller's epoll mutex) would deadlock its own relay.
	sock      int
	sockOnce  sync.Once
	sockClose sync.Once
	init      []byte
	log       hclog.Logger
	// dropInitReply: the next reply with INIT's unique is go-fuse's
	// answer to a replayed INIT; the kernel must not see it.
	dropInitReply atomic.Bool
	initUnique    uint64

	mu       sync.Mutex
	inflight map[uint64]struct{} // requests go-fuse has not answered
	drained  *sync.Cond
	paused   bool

	readers sync.WaitGroup // kernel → go-fuse
	replies sync.WaitGroup // go-fuse → kernel
	gone    chan struct{}  // closed when the kernel connection ended (ENODEV)
	goneOne sync.Once
}

func newSeqpacketPair() (ours, theirs int, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("socketpair: %w", err)
	}
	for _, fd := range fds {
		// A request or reply of up to max_write must fit in one message.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, fuseRelaySockBuf); err != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, fuseRelaySockBuf); err != nil {
				unix.Close(fds[0])
				unix.Close(fds[1])
				return -1, -1, fmt.Errorf("socket buffer: %w", err)
			}
		}
	}
	return fds[0], fds[1], nil
}

// pollable returns fd as a non-blocking *os.File (deadlines work).
func pollable(fd int, name string) (*os.File, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

func newFuseRelay(dev *os.File, ourSock int) (*fuseRelay, error) {
	devFD, err := dupFile(dev)
	if err != nil {
		return nil, err
	}
	r := &fuseRelay{dev: dev, devFD: devFD, sock: ourSock, inflight: map[uint64]struct{}{}, gone: make(chan struct{})}
	r.drained = sync.NewCond(&r.mu)
	return r, nil
}

// readInit forwards the kernel's first request, INIT, to go-fuse and
// keeps a copy.
func (r *fuseRelay) readInit() error {
	buf := make([]byte, fuseRelayBufSize)
	var n int
	for {
		if _, err := unix.Poll([]unix.PollFd{{Fd: int32(r.devFD), Events: unix.POLLIN}}, 1000); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll fuse INIT: %w", err)
		}
		var err error
		n, err = unix.Read(r.devFD, buf)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read fuse INIT: %w", err)
		}
		break
	}
	if n < 40 || binary.LittleEndian.Uint32(buf[4:8]) != fuseOpInit {
		return fmt.Errorf("first fuse request is not INIT (%d bytes)", n)
	}
	r.init = append([]byte(nil), buf[:n]...)
	return r.forward(buf[:n])
}

// replayInit gives go-fuse the INIT the kernel sent the first server.
func (r *fuseRelay) replayInit(init []byte) error {
	if len(init) < 40 || binary.LittleEndian.Uint32(init[4:8]) != fuseOpInit {
		return fmt.Errorf("%w: the saved INIT request is malformed", ErrHandoff)
	}
	r.init = init
	r.initUnique = binary.LittleEndian.Uint64(init[8:16])
	r.dropInitReply.Store(true)
	_, err := unix.Write(r.sock, init)
	return err
}

// forward sends one kernel request to go-fuse, remembering it until its
// reply when it expects one.
func (r *fuseRelay) forward(msg []byte) error {
	op := binary.LittleEndian.Uint32(msg[4:8])
	if op != fuseOpForget && op != fuseOpBatchForget && op != fuseOpInterrupt {
		r.mu.Lock()
		r.inflight[binary.LittleEndian.Uint64(msg[8:16])] = struct{}{}
		r.mu.Unlock()
	}
	_, err := unix.Write(r.sock, msg)
	return err
}

func (r *fuseRelay) kernelGone() { r.goneOne.Do(func() { close(r.gone) }) }

// start runs the copy loops.
func (r *fuseRelay) start() {
	r.replies.Go(r.replyLoop)
	r.startReaders()
}

func (r *fuseRelay) startReaders() {
	r.stopping.Store(false)
	for range fuseRelayReaders {
		r.readers.Go(r.readLoop)
	}
}

// readLoop reads requests until stopping (checked at least every
// 100ms) or the connection ends.
func (r *fuseRelay) readLoop() {
	buf := make([]byte, fuseRelayBufSize)
	pfd := []unix.PollFd{{Fd: int32(r.devFD), Events: unix.POLLIN}}
	for !r.stopping.Load() {
		if _, err := unix.Poll(pfd, 100); err != nil && !errors.Is(err, unix.EINTR) {
			r.log.Error("fuse relay: poll /dev/fuse failed", "error", err)
			return
		}
		if r.stopping.Load() {
			return
		}
		n, err := unix.Read(r.devFD, buf)
		switch {
		case err == nil:
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR), errors.Is(err, unix.ENOENT):
			continue // another reader got it; ENOENT: interrupted before we read it
		default:
			// ENODEV: unmounted or aborted; the connection is over.
			if !errors.Is(err, unix.ENODEV) {
				r.log.Error("fuse relay: reading /dev/fuse failed; the connection is over", "error", err)
			}
			r.kernelGone()
			r.stopping.Store(true)
			r.shutdownSock() // go-fuse sees EOF and stops
			return
		}
		if err := r.forward(buf[:n]); err != nil {
			if !r.stopping.Load() {
				r.log.Error("fuse relay: passing a request to the server failed", "error", err, "bytes", n)
			}
			r.kernelGone()
			return
		}
	}
}

func (r *fuseRelay) replyLoop() {
	buf := make([]byte, fuseRelayBufSize)
	for {
		n, err := unix.Read(r.sock, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			return
		}
		if n < 16 {
			continue
		}
		unique := binary.LittleEndian.Uint64(buf[8:16])
		if r.dropInitReply.Load() && unique == r.initUnique {
			r.dropInitReply.Store(false)
			continue
		}
		// ENOENT: the kernel no longer waits for it (interrupted or
		// aborted); nothing to do either way.
		if _, err := unix.Write(r.devFD, buf[:n]); err != nil && !errors.Is(err, syscall.ENOENT) {
			r.log.Warn("fuse relay: passing a reply to the kernel failed", "error", err, "bytes", n)
		}
		if unique != 0 {
			r.mu.Lock()
			delete(r.inflight, unique)
			if len(r.inflight) == 0 {
				r.drained.Broadcast()
			}
			r.mu.Unlock()
		}
	}
}

// resend asks the kernel to queue again every request a server read and
// did not answer (Linux 6.9+).
func (r *fuseRelay) resend() error {
	var hdr [16]byte
	binary.LittleEndian.PutUint32(hdr[0:4], 16)
	binary.LittleEndian.PutUint32(hdr[4:8], fuseNotifyResend)
	_, err := unix.Write(r.devFD, hdr[:])
	return err
}

// pause stops reading new requests (they wait in the kernel) and waits,
// up to timeout, until go-fuse has answered every request read so far.
func (r *fuseRelay) pause(timeout time.Duration) error {
	r.mu.Lock()
	r.paused = true
	r.mu.Unlock()
	r.stopping.Store(true)
	r.readers.Wait()
	done := make(chan struct{})
	var left int
	go func() {
		r.mu.Lock()
		for len(r.inflight) > 0 && r.paused {
			r.drained.Wait()
		}
		left = len(r.inflight)
		r.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		r.mu.Lock()
		r.paused = false // ends the waiter
		left = len(r.inflight)
		r.drained.Broadcast()
		r.mu.Unlock()
		<-done
		return fmt.Errorf("%w: %d requests still unanswered after %s (the successor has the kernel resend them)", ErrHandoff, left, timeout)
	}
}

// stop ends both loops without touching the kernel connection: go-fuse
// sees its socket close.
func (r *fuseRelay) stop() {
	r.stopping.Store(true)
	r.readers.Wait()
	r.shutdownSock()
	r.replies.Wait()
	r.sockClose.Do(func() { unix.Close(r.sock) })
}

// shutdownSock ends both directions of the socket pair: go-fuse and the
// reply loop read EOF.
func (r *fuseRelay) shutdownSock() {
	r.sockOnce.Do(func() { _ = unix.Shutdown(r.sock, unix.SHUT_RDWR) })
}

// closeDev closes this process's descriptors of the connection.
func (r *fuseRelay) closeDev() {
	r.devOnce.Do(func() {
		unix.Close(r.devFD)
		_ = r.dev.Close()
	})
}

// NewHandoff is New for a connection that can be handed
// over: the same file system, served through the relay. It mounts at
// cfg.Dir itself (fuse.<"saddlebag">, no fusermount).
func NewHandoff(ctx context.Context, dev replication.Device, cfg Config) (*Mount, error) {
	dir, err := mountDir(cfg)
	if err != nil {
		return nil, err
	}
	devFD, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=%d,group_id=%d,max_read=%d", devFD, os.Geteuid(), os.Getegid(), fuseMaxWrite)
	if err := unix.Mount("saddlebag:"+cfg.Name, dir, "fuse.saddlebag", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		unix.Close(devFD)
		return nil, fmt.Errorf("mount fuse at %s: %w", dir, err)
	}
	devF, err := pollable(devFD, "/dev/fuse")
	if err != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		unix.Close(devFD)
		return nil, err
	}
	m, err := serveRelayed(ctx, dev, cfg, dir, devF, nil)
	if err != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		devF.Close()
		return nil, err
	}
	return m, nil
}

// Adopt serves a FUSE connection another process mounted and served
// (with NewHandoff or Adopt) and handed over: conn is its
// descriptor and INIT request (the mount at cfg.Dir, the loop device and
// the file system above are untouched). Requests the previous server
// read and never answered are resent by the kernel. conn.Dev belongs to
// the mount from then on.
func Adopt(ctx context.Context, dev replication.Device, cfg Config, conn Conn) (*Mount, error) {
	dir, err := mountDir(cfg)
	if err != nil {
		return nil, err
	}
	// A fresh descriptor of the same open file, wrapped pollable.
	fd, err := dupFile(conn.Dev)
	if err != nil {
		return nil, fmt.Errorf("%w: dup: %v", ErrHandoff, err)
	}
	conn.Dev.Close()
	devF, err := pollable(fd, "/dev/fuse")
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	m, err := serveRelayed(ctx, dev, cfg, dir, devF, conn.Init)
	if err != nil {
		devF.Close()
		return nil, err
	}
	if err := m.relay.resend(); err != nil {
		m.log.Warn("fuse: asking the kernel to resend unanswered requests failed (needs Linux 6.9)", "error", err)
	}
	return m, nil
}

// dupFile duplicates f's descriptor without f.Fd(), which would put f
// in blocking mode and stop its deadlines.
func dupFile(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(raw uintptr) { fd, derr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}

// serveRelayed starts go-fuse on a socket pair relayed to devF; init nil
// means a fresh connection (the kernel's INIT is read and kept), else
// init is replayed.
func serveRelayed(ctx context.Context, dev replication.Device, cfg Config, dir string, devF *os.File, init []byte) (*Mount, error) {
	ours, theirs, err := newSeqpacketPair()
	if err != nil {
		return nil, err
	}
	relay, err := newFuseRelay(devF, ours)
	if err == nil {
		relay.log = cfg.Log
		if relay.log == nil {
			relay.log = hclog.NewNullLogger()
		}
	}
	if err != nil {
		unix.Close(ours)
		unix.Close(theirs)
		return nil, err
	}
	if init == nil {
		err = relay.readInit()
	} else {
		err = relay.replayInit(init)
	}
	if err != nil {
		relay.stop()
		unix.Close(theirs)
		return nil, err
	}
	m, fsys, opts := newMount(ctx, dev, cfg, dir)
	opts.DisableSplice = true // the socket is not /dev/fuse
	opts.Logger = relayLogger(opts.Logger, &relay.stopping)
	// go-fuse reads INIT from the socket and answers; the reply loop
	// passes the answer to the kernel (or drops it for a replayed INIT).
	relay.replies.Go(relay.replyLoop)
	srv, err := gofuse.NewServer(fsys, fmt.Sprintf("/dev/fd/%d", theirs), opts)
	if err != nil {
		relay.stop()
		unix.Close(theirs)
		m.cancel()
		return nil, fmt.Errorf("serve fuse at %s: %w", dir, err)
	}
	relay.startReaders()
	m.srv, m.relay = srv, relay
	m.wg.Go(func() {
		defer close(m.done)
		srv.Serve()
	})
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		m.Close()
		return nil, fmt.Errorf("stat fuse mount %s: %w", dir, err)
	}
	m.conn = unix.Minor(st.Dev)
	if init == nil {
		// What go-fuse's WaitMount does for its own mounts: make the
		// kernel ask FUSE_POLL once now and learn ENOSYS, before this
		// process opens the volume file with os.OpenFile, whose epoll
		// registration would otherwise send FUSE_POLL while holding the
		// runtime's netpoller (a deadlock). The kernel remembers it for
		// the connection, so an adopted one needs nothing.
		if fd, err := unix.Open(filepath.Join(dir, ".go-fuse-epoll-hack"), unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
			unix.Close(fd)
		}
	}
	if m.hung > 0 {
		m.wg.Go(func() { m.watchdog(m.hung) })
	}
	m.log.Info("serving volume file over fuse (relayed, can be handed over)", "path", m.path, "size", dev.Size(),
		"connection", m.conn, "adopted", init != nil)
	return m, nil
}

// Conn returns the connection's descriptor (a duplicate, for the
// keeper) and INIT request. Only a mount made by NewHandoff or
// Adopt has one.
func (m *Mount) Conn() (Conn, error) {
	if m.relay == nil {
		return Conn{}, fmt.Errorf("%w: this fuse mount is not relayed", ErrHandoff)
	}
	fd, err := dupFile(m.relay.dev)
	if err != nil {
		return Conn{}, err
	}
	return Conn{Dev: os.NewFile(uintptr(fd), "/dev/fuse"), Init: m.relay.init}, nil
}

// HandOver stops serving without ending the connection, for a successor
// that takes it over with Adopt: no new request is read (they wait
// in the kernel), requests read already are answered (up to timeout;
// the successor has the kernel resend any left), and go-fuse stops. The
// mount, the loop device and the file system above stay. Afterwards
// Unmount and Close do nothing.
func (m *Mount) HandOver(timeout time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.relay == nil {
		return fmt.Errorf("%w: this fuse mount is not relayed", ErrHandoff)
	}
	if !m.mounted {
		return nil
	}
	perr := m.relay.pause(timeout)
	m.relay.stop()
	m.stopped.Do(func() { close(m.stop) })
	m.cancel()
	m.wg.Wait()
	m.mounted = false
	m.relay.closeDev()
	m.log.Info("fuse connection handed over: requests now wait in the kernel for the next server", "connection", m.conn)
	return perr
}
