package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/internal/replicatest"
)

func TestNBDTransmission(t *testing.T) {
	const devSize = 1 << 20
	sector := bytes.Repeat([]byte{0xab}, 512)

	cases := []struct {
		name      string
		hook      func(ctx context.Context, op string) error
		run       func(c *nbdTestClient, dev *replicatest.MemDevice)
		wantStats replicatest.MemStats
		wantLog   string
		maxErrors int // if set, at most this many error log lines
	}{
		{
			name: "read past the end is EINVAL without calling the device",
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				c.request(0, nbdCmdRead, 1, devSize, 512, nil)
				c.expectReply(1, nbdEINVAL)
				c.request(0, nbdCmdRead, 2, devSize-256, 512, nil)
				c.expectReply(2, nbdEINVAL)
				c.request(0, nbdCmdRead, 3, 1<<63+devSize, 512, nil)
				c.expectReply(3, nbdEINVAL)
				c.request(0, nbdCmdRead, 4, ^uint64(0)-100, 512, nil)
				c.expectReply(4, nbdEINVAL)
			},
		},
		{
			name: "trim past the end is EINVAL",
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				c.request(0, nbdCmdTrim, 1, 4096, devSize, nil)
				c.expectReply(1, nbdEINVAL)
			},
		},
		{
			name: "write past the end is ENOSPC and the payload is skipped",
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				c.request(0, nbdCmdWrite, 1, devSize-256, 512, sector)
				c.expectReply(1, nbdENOSPC)
				c.request(nbdCmdFlagNoHole, nbdCmdWriteZeroes, 2, devSize, 512, nil)
				c.expectReply(2, nbdENOSPC)
				c.request(nbdCmdFlagNoHole, nbdCmdWrite, 3, 0, 512, sector) // NO_HOLE is not valid on WRITE
				c.expectReply(3, nbdEINVAL)
			},
		},
		{
			name: "unknown command and unknown flags are EINVAL",
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				c.request(0, 42, 1, 0, 512, nil)
				c.expectReply(1, nbdEINVAL)
				c.request(0, nbdCmdBlockStatus, 2, 0, 512, nil)
				c.expectReply(2, nbdEINVAL)
				c.request(nbdCmdFlagDF, nbdCmdRead, 3, 0, 512, nil)
				c.expectReply(3, nbdEINVAL)
				c.request(nbdCmdFlagFastZero, nbdCmdWriteZeroes, 4, 0, 512, nil)
				c.expectReply(4, nbdEINVAL)
			},
		},
		{
			name: "zero-length requests do not reach the device",
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				c.request(0, nbdCmdRead, 1, 0, 0, nil)
				c.expectReply(1, 0)
				c.request(0, nbdCmdWrite, 2, devSize, 0, nil)
				c.expectReply(2, 0)
				c.request(0, nbdCmdTrim, 3, 0, 0, nil)
				c.expectReply(3, 0)
			},
		},
		{
			name: "write read flush",
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				c.request(0, nbdCmdWrite, 1, 4096, 512, sector)
				c.expectReply(1, 0)
				c.request(nbdCmdFlagFUA, nbdCmdWrite, 2, 8192, 512, sector)
				c.expectReply(2, 0)
				c.request(0, nbdCmdFlush, 3, 0, 0, nil)
				c.expectReply(3, 0)
				c.request(0, nbdCmdRead, 4, 4096, 8192+512-4096, nil)
				c.expectReply(4, 0)
				got := c.read(8192 + 512 - 4096)
				must.Eq(c.t, sector, got[:512])
				must.Eq(c.t, make([]byte, 4096-512), got[512:4096])
				must.Eq(c.t, sector, got[4096:])
				c.request(0, nbdCmdDisc, 5, 0, 0, nil)
				c.expectClosed()
			},
			wantStats: replicatest.MemStats{Reads: 1, Writes: 2, FUAWrites: 1, Flushes: 1},
		},
		{
			name: "write zeroes trims unless no_hole",
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				c.request(0, nbdCmdWrite, 1, 0, 512, sector)
				c.expectReply(1, 0)
				c.request(0, nbdCmdWrite, 2, 512, 512, sector)
				c.expectReply(2, 0)
				c.request(0, nbdCmdWriteZeroes, 3, 0, 512, nil)
				c.expectReply(3, 0)
				c.request(nbdCmdFlagNoHole|nbdCmdFlagFUA, nbdCmdWriteZeroes, 4, 512, 512, nil)
				c.expectReply(4, 0)
				c.request(nbdCmdFlagFUA, nbdCmdTrim, 5, 1024, 512, nil)
				c.expectReply(5, 0)
				must.Eq(c.t, make([]byte, 2048), dev.Contents()[:2048])
			},
			// WRITE_ZEROES -> Trim; NO_HOLE|FUA -> WriteAt(fua); TRIM|FUA -> Trim + Flush.
			wantStats: replicatest.MemStats{Writes: 3, FUAWrites: 1, Trims: 2, Flushes: 1},
		},
		{
			name: "write over the maximum payload closes the connection",
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				c.request(0, nbdCmdWrite, 1, 0, 32<<20+1, nil)
				c.expectClosed()
			},
			wantLog: "exceeds",
		},
		{
			name: "bad request magic closes the connection",
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				b := nbdReqBytes(0, nbdCmdRead, 1, 0, 512, nil)
				b[3] ^= 1
				c.send(b)
				c.expectClosed()
			},
			wantLog: "bad request magic",
		},
		{
			name: "fenced device replies ESHUTDOWN",
			hook: func(context.Context, string) error { return fmt.Errorf("epoch 7: %w", replication.ErrFenced) },
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				c.request(0, nbdCmdRead, 1, 0, 512, nil)
				c.expectReply(1, nbdESHUTDOWN)
				c.request(0, nbdCmdWrite, 2, 0, 512, sector)
				c.expectReply(2, nbdESHUTDOWN)
				c.request(0, nbdCmdFlush, 3, 0, 0, nil)
				c.expectReply(3, nbdESHUTDOWN)
			},
			wantStats: replicatest.MemStats{Reads: 1, Writes: 1, Flushes: 1},
			wantLog:   "fenced by a newer primary",
			maxErrors: 1, // logged once per connection, not per request
		},
		{
			name: "full replica replies ENOSPC",
			hook: func(context.Context, string) error { return fmt.Errorf("replica b: %w", replication.ErrNoSpace) },
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				c.request(0, nbdCmdWrite, 1, 0, 512, sector)
				c.expectReply(1, nbdENOSPC)
			},
			wantStats: replicatest.MemStats{Writes: 1},
			wantLog:   "nbd request failed",
		},
		{
			name: "device out of range replies EINVAL",
			hook: func(context.Context, string) error { return fmt.Errorf("engine: %w", replication.ErrOutOfRange) },
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				c.request(0, nbdCmdTrim, 1, 0, 512, nil)
				c.expectReply(1, nbdEINVAL)
			},
			wantStats: replicatest.MemStats{Trims: 1},
			wantLog:   "nbd request failed",
		},
		{
			name: "other device errors reply EIO",
			hook: func(context.Context, string) error { return replication.ErrNoReplicas },
			run: func(c *nbdTestClient, dev *replicatest.MemDevice) {
				c.request(0, nbdCmdRead, 1, 0, 512, nil)
				c.expectReply(1, nbdEIO)
				// The failed read sent no data: the next reply is aligned.
				c.request(0, nbdCmdFlush, 2, 0, 0, nil)
				c.expectReply(2, nbdEIO)
			},
			wantStats: replicatest.MemStats{Reads: 1, Flushes: 1},
			wantLog:   "no in-sync replica",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev := nbdNewMemDevice(devSize)
			dev.Hook = tc.hook
			srv := nbdStartServer(t, dev, "")
			c := nbdDial(t, srv.sock)
			c.handshake()
			tc.run(c, dev)
			must.Eq(t, tc.wantStats, dev.Stats())
			if tc.wantLog != "" {
				nbdWaitLog(t, srv.logs, tc.wantLog)
				must.StrContains(t, srv.logs.String(), "[ERROR]")
			}
			if tc.maxErrors > 0 {
				must.LessEq(t, tc.maxErrors, strings.Count(srv.logs.String(), "[ERROR]"))
			}
		})
	}
}

// TestNBDConcurrentRequests: two reads on one connection must be inside the
// device at the same time.
func TestNBDConcurrentRequests(t *testing.T) {
	dev := nbdNewMemDevice(1 << 20)
	var mu sync.Mutex
	inside := 0
	both := make(chan struct{})
	dev.Hook = func(ctx context.Context, op string) error {
		mu.Lock()
		inside++
		if inside == 2 {
			close(both)
		}
		mu.Unlock()
		select {
		case <-both:
			return nil
		case <-time.After(5 * time.Second):
			return errors.New("requests were not handled concurrently")
		}
	}
	srv := nbdStartServer(t, dev, "")
	c := nbdDial(t, srv.sock)
	c.handshake()
	c.request(0, nbdCmdRead, 1, 0, 4096, nil)
	c.request(0, nbdCmdRead, 2, 4096, 4096, nil)
	seen := map[uint64]bool{}
	for range 2 {
		errno, cookie := c.reply()
		must.EqOp(t, uint32(0), errno)
		c.read(4096)
		seen[cookie] = true
	}
	must.Eq(t, map[uint64]bool{1: true, 2: true}, seen)
}

// TestNBDDiscWaitsForInFlight: NBD_CMD_DISC lets in-flight requests reply
// before the connection closes.
func TestNBDDiscWaitsForInFlight(t *testing.T) {
	data := make([]byte, 1<<20)
	copy(data, "hello")
	dev := replicatest.NewMemDevice(data)
	release := make(chan struct{})
	dev.HookCalled = make(chan string, 1)
	dev.Hook = func(ctx context.Context, op string) error {
		<-release
		return nil
	}
	srv := nbdStartServer(t, dev, "")
	c := nbdDial(t, srv.sock)
	c.handshake()
	c.request(0, nbdCmdRead, 1, 0, 512, nil)
	<-dev.HookCalled
	c.request(0, nbdCmdDisc, 2, 0, 0, nil)
	time.Sleep(100 * time.Millisecond) // let the server read DISC
	close(release)
	c.expectReply(1, 0)
	must.Eq(t, []byte("hello"), c.read(512)[:5])
	c.expectClosed()
}

// nbdNoServerGoroutines waits until no goroutine runs server code (a
// context.AfterFunc callback may still be finishing a Close).
func nbdNoServerGoroutines(t *testing.T) {
	t.Helper()
	var left []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		left = left[:0]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "frontend/nbd.(*Server)") || strings.Contains(g, "frontend/nbd.(*nbdConn)") {
				left = append(left, g)
			}
		}
		if len(left) == 0 {
			return
		}
	}
	t.Fatalf("server goroutines left:\n%s", strings.Join(left, "\n\n"))
}

// TestNBDServeCancel: cancelling ctx closes the listener and every open
// connection (one mid-negotiation, one with a request stuck in the device),
// and Serve returns with no server goroutine left.
func TestNBDServeCancel(t *testing.T) {
	dev := nbdNewMemDevice(1 << 20)
	dev.HookCalled = make(chan string, 1)
	dev.Hook = func(ctx context.Context, op string) error {
		<-ctx.Done()
		return ctx.Err()
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	must.NoError(t, err)
	log, _ := nbdTestLogger(t)
	srv := NewServer(dev, "", log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()

	negotiating := nbdDial(t, sock)
	busy := nbdDial(t, sock)
	busy.handshake()
	busy.request(0, nbdCmdRead, 1, 0, 512, nil)
	<-dev.HookCalled

	cancel()
	select {
	case err := <-done:
		must.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	nbdNoServerGoroutines(t)
	negotiating.expectClosed()
	_, _ = io.ReadAll(busy.r) // an EIO reply may or may not have made it out
	_, err = net.Dial("unix", sock)
	must.Error(t, err)
}

// TestNBDServeListenerClosed: closing the listener stops Serve too.
func TestNBDServeListenerClosed(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	must.NoError(t, err)
	log, _ := nbdTestLogger(t)
	srv := NewServer(nbdNewMemDevice(4096), "", log)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	c := nbdDial(t, sock)
	must.NoError(t, ln.Close())
	select {
	case err := <-done:
		must.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the listener closed")
	}
	c.expectClosed()
	nbdNoServerGoroutines(t)
}
