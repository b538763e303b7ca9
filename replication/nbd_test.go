package replication

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// ---------------------------------------------------------------------------
// memDevice: an in-memory Device that records how it was called.

type memDevice struct {
	mu         sync.Mutex
	data       []byte
	stats      nbdMemStats
	hook       func(ctx context.Context, op string) error // optional; runs on every in-range call
	hookCalled chan string                                // optional; receives op on every hook call
}

// nbdMemStats counts memDevice calls.
type nbdMemStats struct {
	Reads, Writes, FUAWrites, Flushes, Trims int
	OutOfRange                               int // calls outside the device: the server must never make them
}

func nbdNewMemDevice(size int) *memDevice { return &memDevice{data: make([]byte, size)} }

func (d *memDevice) Size() int64 { return int64(len(d.data)) }

func (d *memDevice) snapshot() nbdMemStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

func (d *memDevice) contents() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Clone(d.data)
}

// enter counts a call, checks its range and runs the hook.
func (d *memDevice) enter(ctx context.Context, op string, off, n int64) error {
	d.mu.Lock()
	inRange := off >= 0 && n >= 0 && off <= int64(len(d.data)) && n <= int64(len(d.data))-off
	if !inRange {
		d.stats.OutOfRange++
	}
	hook := d.hook
	d.mu.Unlock()
	if !inRange {
		return fmt.Errorf("mem device %s at %d+%d: %w", op, off, n, ErrOutOfRange)
	}
	if hook != nil {
		if d.hookCalled != nil {
			d.hookCalled <- op
		}
		return hook(ctx, op)
	}
	return nil
}

func (d *memDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.mu.Lock()
	d.stats.Reads++
	d.mu.Unlock()
	if err := d.enter(ctx, "read", off, int64(len(p))); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(p, d.data[off:])
	return nil
}

func (d *memDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	d.mu.Lock()
	d.stats.Writes++
	if fua {
		d.stats.FUAWrites++
	}
	d.mu.Unlock()
	if err := d.enter(ctx, "write", off, int64(len(p))); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.data[off:], p)
	return nil
}

func (d *memDevice) Flush(ctx context.Context) error {
	d.mu.Lock()
	d.stats.Flushes++
	d.mu.Unlock()
	return d.enter(ctx, "flush", 0, 0)
}

func (d *memDevice) Trim(ctx context.Context, off, length int64) error {
	d.mu.Lock()
	d.stats.Trims++
	d.mu.Unlock()
	if err := d.enter(ctx, "trim", off, length); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.data[off : off+length])
	return nil
}

// ---------------------------------------------------------------------------
// Logging through t.

// nbdTestLog is an io.Writer for hclog that forwards to t.Log and keeps a
// copy so tests can assert on what was logged.
type nbdTestLog struct {
	t   testing.TB
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *nbdTestLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	w.mu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (w *nbdTestLog) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func nbdTestLogger(t testing.TB) (hclog.Logger, *nbdTestLog) {
	w := &nbdTestLog{t: t}
	return hclog.New(&hclog.LoggerOptions{Name: "nbd", Level: hclog.Debug, Output: w}), w
}

// ---------------------------------------------------------------------------
// A server on a unix socket in t.TempDir, stopped at cleanup.

type nbdTestServer struct {
	dev  *memDevice
	sock string
	logs *nbdTestLog
}

// uri is the NBD URI of export name on the test server.
func (s *nbdTestServer) uri(name string) string {
	return "nbd+unix:///" + name + "?socket=" + s.sock
}

func nbdStartServer(t *testing.T, dev *memDevice, exportName string) *nbdTestServer {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	must.NoError(t, err)
	log, logs := nbdTestLogger(t)
	srv := NewNBDServer(dev, exportName, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			must.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after cancel")
		}
	})
	return &nbdTestServer{dev: dev, sock: sock, logs: logs}
}

// ---------------------------------------------------------------------------
// Wire builders, shared with the fuzz test.

func nbdClientFlagsBytes(flags uint32) []byte { return binary.BigEndian.AppendUint32(nil, flags) }

func nbdOptBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, nbdOptMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// nbdGoData is the data of NBD_OPT_GO / NBD_OPT_INFO.
func nbdGoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func nbdReqBytes(flags, typ uint16, cookie, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, nbdRequestMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

// ---------------------------------------------------------------------------
// A hand-written raw protocol client.

type nbdTestClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

// nbdDial connects and reads the server greeting.
func nbdDial(t *testing.T, sock string) *nbdTestClient {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	must.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	must.NoError(t, conn.SetDeadline(time.Now().Add(20*time.Second)))
	c := &nbdTestClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	g := c.read(nbdHandshakeGreetingLen)
	must.EqOp(t, nbdMagic, binary.BigEndian.Uint64(g[0:]))
	must.EqOp(t, nbdOptMagic, binary.BigEndian.Uint64(g[8:]))
	must.EqOp(t, nbdFlagFixedNewstyle|nbdFlagNoZeroes, binary.BigEndian.Uint16(g[16:]))
	return c
}

func (c *nbdTestClient) send(b []byte) {
	c.t.Helper()
	_, err := c.conn.Write(b)
	must.NoError(c.t, err)
}

func (c *nbdTestClient) read(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	_, err := io.ReadFull(c.r, b)
	must.NoError(c.t, err)
	return b
}

type nbdTestOptReply struct {
	opt, typ uint32
	data     []byte
}

func (c *nbdTestClient) readOptReply() nbdTestOptReply {
	c.t.Helper()
	h := c.read(nbdOptReplyHeaderLen)
	must.EqOp(c.t, nbdOptReplyMagic, binary.BigEndian.Uint64(h[0:]))
	r := nbdTestOptReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = c.read(int(binary.BigEndian.Uint32(h[16:])))
	return r
}

// expectOptError sends opt and expects an error reply of type want.
func (c *nbdTestClient) expectOptError(opt uint32, data []byte, want uint32) {
	c.t.Helper()
	c.send(nbdOptBytes(opt, data))
	r := c.readOptReply()
	must.EqOp(c.t, opt, r.opt)
	must.EqOp(c.t, want, r.typ, must.Sprintf("reply type %#x, message %q", r.typ, r.data))
}

type nbdTestExport struct {
	size                        uint64
	flags                       uint16
	minBS, preferredBS, maxBS   uint32
	sawExportInfo, sawBlockInfo bool
}

// info sends NBD_OPT_INFO or NBD_OPT_GO for name and collects the replies up
// to the ACK.
func (c *nbdTestClient) info(opt uint32, name string) nbdTestExport {
	c.t.Helper()
	c.send(nbdOptBytes(opt, nbdGoData(name, nbdInfoBlockSize)))
	var e nbdTestExport
	for {
		r := c.readOptReply()
		must.EqOp(c.t, opt, r.opt)
		if r.typ == nbdRepAck {
			break
		}
		must.EqOp(c.t, nbdRepInfo, r.typ, must.Sprintf("reply type %#x, message %q", r.typ, r.data))
		switch binary.BigEndian.Uint16(r.data) {
		case nbdInfoExport:
			must.Len(c.t, 12, r.data)
			e.size = binary.BigEndian.Uint64(r.data[2:])
			e.flags = binary.BigEndian.Uint16(r.data[10:])
			e.sawExportInfo = true
		case nbdInfoBlockSize:
			must.Len(c.t, 14, r.data)
			e.minBS = binary.BigEndian.Uint32(r.data[2:])
			e.preferredBS = binary.BigEndian.Uint32(r.data[6:])
			e.maxBS = binary.BigEndian.Uint32(r.data[10:])
			e.sawBlockInfo = true
		}
	}
	must.True(c.t, e.sawExportInfo, must.Sprint("no NBD_INFO_EXPORT before ACK"))
	return e
}

// handshake sends the client flags and NBD_OPT_GO for the default export.
func (c *nbdTestClient) handshake() {
	c.t.Helper()
	c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
	c.info(nbdOptGo, "")
}

func (c *nbdTestClient) request(flags, typ uint16, cookie, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	c.send(nbdReqBytes(flags, typ, cookie, off, length, payload))
}

// reply reads a simple reply header.
func (c *nbdTestClient) reply() (errno uint32, cookie uint64) {
	c.t.Helper()
	h := c.read(nbdSimpleReplyHeaderLen)
	must.EqOp(c.t, nbdSimpleReplyMagic, binary.BigEndian.Uint32(h[0:]))
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

// expectReply reads a reply and checks its cookie and error.
func (c *nbdTestClient) expectReply(cookie uint64, errno uint32) {
	c.t.Helper()
	gotErr, gotCookie := c.reply()
	must.EqOp(c.t, cookie, gotCookie)
	must.EqOp(c.t, errno, gotErr)
}

// expectClosed checks that the server drops the connection.
func (c *nbdTestClient) expectClosed() {
	c.t.Helper()
	b, err := io.ReadAll(c.r)
	must.NoError(c.t, err, must.Sprint("want the server to close the connection"))
	must.Len(c.t, 0, b, must.Sprintf("unexpected trailing data %x", b))
}

// nbdWaitLog polls the server log for sub.
func nbdWaitLog(t *testing.T, logs *nbdTestLog, sub string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), sub) {
		if time.Now().After(deadline) {
			t.Fatalf("log does not contain %q:\n%s", sub, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Negotiation.

func TestNBDNegotiation(t *testing.T) {
	const devSize = 1 << 20
	const name = "vol0"
	wantFlags := nbdFlagHasFlags | nbdFlagSendFlush | nbdFlagSendFUA | nbdFlagSendTrim |
		nbdFlagSendWriteZeroes | nbdFlagCanMultiConn

	// checkTransmission proves the stream is in the transmission phase and
	// aligned: a one-sector read succeeds.
	checkTransmission := func(c *nbdTestClient) {
		c.t.Helper()
		c.request(0, nbdCmdRead, 7, 0, 512, nil)
		c.expectReply(7, 0)
		c.read(512)
	}
	goOK := func(c *nbdTestClient) {
		c.t.Helper()
		e := c.info(nbdOptGo, "")
		must.EqOp(c.t, uint64(devSize), e.size)
		checkTransmission(c)
	}

	cases := []struct {
		name    string
		run     func(c *nbdTestClient)
		wantLog string // an error the server must log
	}{
		{
			name: "go with default export",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				e := c.info(nbdOptGo, "")
				must.EqOp(c.t, uint64(devSize), e.size)
				must.EqOp(c.t, wantFlags, e.flags)
				must.True(c.t, e.sawBlockInfo)
				must.EqOp(c.t, uint32(512), e.minBS)
				must.EqOp(c.t, uint32(4096), e.preferredBS)
				must.EqOp(c.t, uint32(32<<20), e.maxBS)
				checkTransmission(c)
			},
		},
		{
			name: "go with named export without no_zeroes",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle))
				e := c.info(nbdOptGo, name)
				must.EqOp(c.t, uint64(devSize), e.size)
				checkTransmission(c)
			},
		},
		{
			name: "info then go",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				e := c.info(nbdOptInfo, name)
				must.EqOp(c.t, uint64(devSize), e.size)
				goOK(c)
			},
		},
		{
			name: "unknown option is refused and negotiation continues",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.expectOptError(4242, []byte("whatever"), nbdRepErrUnsup)
				goOK(c)
			},
		},
		{
			name: "unsupported extensions are refused so clients fall back",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.expectOptError(nbdOptStartTLS, nil, nbdRepErrPolicy)
				c.expectOptError(nbdOptStructuredReply, nil, nbdRepErrUnsup)
				c.expectOptError(nbdOptListMetaContext, nbdGoData(""), nbdRepErrUnsup)
				c.expectOptError(nbdOptSetMetaContext, nbdGoData(""), nbdRepErrUnsup)
				c.expectOptError(nbdOptExtendedHeaders, nil, nbdRepErrUnsup)
				c.expectOptError(nbdOptPeekExport, nil, nbdRepErrUnsup)
				goOK(c)
			},
		},
		{
			name: "unknown export name with go",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.expectOptError(nbdOptGo, nbdGoData("nope"), nbdRepErrUnknown)
				c.expectOptError(nbdOptInfo, nbdGoData("nope"), nbdRepErrUnknown)
				goOK(c)
			},
		},
		{
			name: "malformed go",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.expectOptError(nbdOptGo, []byte{0, 0, 0, 9, 'x'}, nbdRepErrInvalid)
				c.expectOptError(nbdOptGo, append(nbdGoData(""), 0), nbdRepErrInvalid)
				goOK(c)
			},
		},
		{
			name: "list",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.send(nbdOptBytes(nbdOptList, nil))
				r := c.readOptReply()
				must.EqOp(c.t, nbdRepServer, r.typ)
				must.Eq(c.t, append(binary.BigEndian.AppendUint32(nil, uint32(len(name))), name...), r.data)
				r = c.readOptReply()
				must.EqOp(c.t, nbdRepAck, r.typ)
				c.expectOptError(nbdOptList, []byte("x"), nbdRepErrInvalid)
				goOK(c)
			},
		},
		{
			name: "abort",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.send(nbdOptBytes(nbdOptAbort, nil))
				r := c.readOptReply()
				must.EqOp(c.t, nbdRepAck, r.typ)
				c.expectClosed()
			},
		},
		{
			name: "export name pads with zeroes unless no_zeroes",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle))
				c.send(nbdOptBytes(nbdOptExportName, []byte(name)))
				b := c.read(8 + 2 + 124)
				must.EqOp(c.t, uint64(devSize), binary.BigEndian.Uint64(b))
				must.EqOp(c.t, wantFlags, binary.BigEndian.Uint16(b[8:]))
				must.Eq(c.t, make([]byte, 124), b[10:])
				checkTransmission(c)
			},
		},
		{
			name: "export name with no_zeroes",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.send(nbdOptBytes(nbdOptExportName, nil))
				b := c.read(8 + 2)
				must.EqOp(c.t, uint64(devSize), binary.BigEndian.Uint64(b))
				checkTransmission(c)
			},
		},
		{
			name: "unknown export name with export_name closes",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.send(nbdOptBytes(nbdOptExportName, []byte("nope")))
				c.expectClosed()
			},
			wantLog: "unknown export name",
		},
		{
			name: "bad option magic closes",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				b := nbdOptBytes(nbdOptGo, nbdGoData(""))
				b[0] ^= 0xff
				c.send(b)
				c.expectClosed()
			},
			wantLog: "bad option magic",
		},
		{
			name: "oversize option length closes",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				b := nbdOptBytes(nbdOptGo, nil)
				binary.BigEndian.PutUint32(b[12:], 64<<10+1)
				c.send(b)
				c.expectClosed()
			},
			wantLog: "exceeds",
		},
		{
			name: "unknown client flags close",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | 1<<7))
				c.expectClosed()
			},
			wantLog: "unknown client flags",
		},
		{
			name: "client without fixed newstyle is refused",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(0))
				c.expectClosed()
			},
			wantLog: "fixed newstyle",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev := nbdNewMemDevice(devSize)
			srv := nbdStartServer(t, dev, name)
			c := nbdDial(t, srv.sock)
			tc.run(c)
			if tc.wantLog != "" {
				nbdWaitLog(t, srv.logs, tc.wantLog)
				must.StrContains(t, srv.logs.String(), "[ERROR]")
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Transmission.

func TestNBDTransmission(t *testing.T) {
	const devSize = 1 << 20
	sector := bytes.Repeat([]byte{0xab}, 512)

	cases := []struct {
		name      string
		hook      func(ctx context.Context, op string) error
		run       func(c *nbdTestClient, dev *memDevice)
		wantStats nbdMemStats
		wantLog   string
		maxErrors int // if set, at most this many error log lines
	}{
		{
			name: "read past the end is EINVAL without calling the device",
			run: func(c *nbdTestClient, dev *memDevice) {
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
			run: func(c *nbdTestClient, dev *memDevice) {
				c.request(0, nbdCmdTrim, 1, 4096, devSize, nil)
				c.expectReply(1, nbdEINVAL)
			},
		},
		{
			name: "write past the end is ENOSPC and the payload is skipped",
			run: func(c *nbdTestClient, dev *memDevice) {
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
			run: func(c *nbdTestClient, dev *memDevice) {
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
			run: func(c *nbdTestClient, dev *memDevice) {
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
			run: func(c *nbdTestClient, dev *memDevice) {
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
			wantStats: nbdMemStats{Reads: 1, Writes: 2, FUAWrites: 1, Flushes: 1},
		},
		{
			name: "write zeroes trims unless no_hole",
			run: func(c *nbdTestClient, dev *memDevice) {
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
				must.Eq(c.t, make([]byte, 2048), dev.contents()[:2048])
			},
			// WRITE_ZEROES -> Trim; NO_HOLE|FUA -> WriteAt(fua); TRIM|FUA -> Trim + Flush.
			wantStats: nbdMemStats{Writes: 3, FUAWrites: 1, Trims: 2, Flushes: 1},
		},
		{
			name: "write over the maximum payload closes the connection",
			run: func(c *nbdTestClient, dev *memDevice) {
				c.request(0, nbdCmdWrite, 1, 0, 32<<20+1, nil)
				c.expectClosed()
			},
			wantLog: "exceeds",
		},
		{
			name: "bad request magic closes the connection",
			run: func(c *nbdTestClient, dev *memDevice) {
				b := nbdReqBytes(0, nbdCmdRead, 1, 0, 512, nil)
				b[3] ^= 1
				c.send(b)
				c.expectClosed()
			},
			wantLog: "bad request magic",
		},
		{
			name: "fenced device replies ESHUTDOWN",
			hook: func(context.Context, string) error { return fmt.Errorf("epoch 7: %w", ErrFenced) },
			run: func(c *nbdTestClient, dev *memDevice) {
				c.request(0, nbdCmdRead, 1, 0, 512, nil)
				c.expectReply(1, nbdESHUTDOWN)
				c.request(0, nbdCmdWrite, 2, 0, 512, sector)
				c.expectReply(2, nbdESHUTDOWN)
				c.request(0, nbdCmdFlush, 3, 0, 0, nil)
				c.expectReply(3, nbdESHUTDOWN)
			},
			wantStats: nbdMemStats{Reads: 1, Writes: 1, Flushes: 1},
			wantLog:   "fenced by a newer primary",
			maxErrors: 1, // logged once per connection, not per request
		},
		{
			name: "full replica replies ENOSPC",
			hook: func(context.Context, string) error { return fmt.Errorf("replica b: %w", ErrNoSpace) },
			run: func(c *nbdTestClient, dev *memDevice) {
				c.request(0, nbdCmdWrite, 1, 0, 512, sector)
				c.expectReply(1, nbdENOSPC)
			},
			wantStats: nbdMemStats{Writes: 1},
			wantLog:   "nbd request failed",
		},
		{
			name: "device out of range replies EINVAL",
			hook: func(context.Context, string) error { return fmt.Errorf("engine: %w", ErrOutOfRange) },
			run: func(c *nbdTestClient, dev *memDevice) {
				c.request(0, nbdCmdTrim, 1, 0, 512, nil)
				c.expectReply(1, nbdEINVAL)
			},
			wantStats: nbdMemStats{Trims: 1},
			wantLog:   "nbd request failed",
		},
		{
			name: "other device errors reply EIO",
			hook: func(context.Context, string) error { return ErrNoReplicas },
			run: func(c *nbdTestClient, dev *memDevice) {
				c.request(0, nbdCmdRead, 1, 0, 512, nil)
				c.expectReply(1, nbdEIO)
				// The failed read sent no data: the next reply is aligned.
				c.request(0, nbdCmdFlush, 2, 0, 0, nil)
				c.expectReply(2, nbdEIO)
			},
			wantStats: nbdMemStats{Reads: 1, Flushes: 1},
			wantLog:   "no in-sync replica",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev := nbdNewMemDevice(devSize)
			dev.hook = tc.hook
			srv := nbdStartServer(t, dev, "")
			c := nbdDial(t, srv.sock)
			c.handshake()
			tc.run(c, dev)
			must.Eq(t, tc.wantStats, dev.snapshot())
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
	dev.hook = func(ctx context.Context, op string) error {
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
	dev := nbdNewMemDevice(1 << 20)
	copy(dev.data, "hello")
	release := make(chan struct{})
	dev.hookCalled = make(chan string, 1)
	dev.hook = func(ctx context.Context, op string) error {
		<-release
		return nil
	}
	srv := nbdStartServer(t, dev, "")
	c := nbdDial(t, srv.sock)
	c.handshake()
	c.request(0, nbdCmdRead, 1, 0, 512, nil)
	<-dev.hookCalled
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
			if strings.Contains(g, "replication.(*NBDServer)") || strings.Contains(g, "replication.(*nbdConn)") {
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
	dev.hookCalled = make(chan string, 1)
	dev.hook = func(ctx context.Context, op string) error {
		<-ctx.Done()
		return ctx.Err()
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	must.NoError(t, err)
	log, _ := nbdTestLogger(t)
	srv := NewNBDServer(dev, "", log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()

	negotiating := nbdDial(t, sock)
	busy := nbdDial(t, sock)
	busy.handshake()
	busy.request(0, nbdCmdRead, 1, 0, 512, nil)
	<-dev.hookCalled

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
	srv := NewNBDServer(nbdNewMemDevice(4096), "", log)
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

// ---------------------------------------------------------------------------
// Real clients (libnbd): nbdinfo, nbdcopy, nbdsh.

// nbdTool finds a libnbd command line tool; a missing tool fails the test.
// On Debian, nbdinfo and nbdcopy come with libnbd-bin and nbdsh with
// python3-libnbd.
func nbdTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found (%v): install it with `apt-get install -y %s`", name, err, pkg)
	}
	return p
}

// nbdRun runs a tool with a timeout and returns its stdout.
func nbdRun(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func TestNBDInfo(t *testing.T) {
	nbdinfo := nbdTool(t, "nbdinfo", "libnbd-bin")
	const size = 8<<20 + 4096
	srv := nbdStartServer(t, nbdNewMemDevice(size), "vol0")

	cases := []struct{ name, export string }{
		{"default export", ""},
		{"named export", "vol0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := nbdRun(t, os.Environ(), nbdinfo, "--size", srv.uri(tc.export))
			must.EqOp(t, fmt.Sprint(size), strings.TrimSpace(out))

			var info struct {
				Exports []map[string]any `json:"exports"`
			}
			out = nbdRun(t, os.Environ(), nbdinfo, "--json", srv.uri(tc.export))
			must.NoError(t, json.Unmarshal([]byte(out), &info), must.Sprint(out))
			must.Len(t, 1, info.Exports)
			e := info.Exports[0]
			must.Eq(t, any(float64(size)), e["export-size"])
			for _, k := range []string{"can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn"} {
				must.Eq(t, any(true), e[k], must.Sprintf("%s in %s", k, out))
			}
			must.Eq(t, any(false), e["is_read_only"])
			must.Eq(t, any(float64(512)), e["block_size_minimum"])
			must.Eq(t, any(float64(4096)), e["block_size_preferred"])
			must.Eq(t, any(float64(32<<20)), e["block_size_maximum"])
		})
	}

	t.Run("list", func(t *testing.T) {
		out := nbdRun(t, os.Environ(), nbdinfo, "--list", "--json", srv.uri(""))
		must.StrContains(t, out, `"export-name": "vol0"`)
	})

	t.Run("unknown export", func(t *testing.T) {
		cmd := exec.Command(nbdinfo, "--size", srv.uri("nope"))
		out, err := cmd.CombinedOutput()
		must.Error(t, err, must.Sprint(string(out)))
	})
}

func TestNBDCopyRoundTrip(t *testing.T) {
	nbdcopy := nbdTool(t, "nbdcopy", "libnbd-bin")
	const size = 16 << 20
	dir := t.TempDir()
	src := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < size; i += 8 {
		binary.LittleEndian.PutUint64(src[i:], rng.Uint64())
	}
	srcPath := filepath.Join(dir, "src.img")
	dstPath := filepath.Join(dir, "dst.img")
	must.NoError(t, os.WriteFile(srcPath, src, 0o600))

	dev := nbdNewMemDevice(size)
	srv := nbdStartServer(t, dev, "vol0")
	uri := srv.uri("vol0")

	nbdRun(t, os.Environ(), nbdcopy, "--flush", srcPath, uri)
	must.True(t, bytes.Equal(src, dev.contents()), must.Sprint("device content differs from the source after nbdcopy in"))
	st := dev.snapshot()
	must.Positive(t, st.Writes)
	must.Positive(t, st.Flushes)
	must.Zero(t, st.OutOfRange)

	nbdRun(t, os.Environ(), nbdcopy, uri, dstPath)
	dst, err := os.ReadFile(dstPath)
	must.NoError(t, err)
	must.EqOp(t, sha256.Sum256(src), sha256.Sum256(dst))
	must.Positive(t, dev.snapshot().Reads)
}

func TestNBDShCommands(t *testing.T) {
	nbdsh := nbdTool(t, "nbdsh", "python3-libnbd")
	// nbdsh runs `python3 -m nbd`; the nbd module is installed for the
	// distribution's python3 next to nbdsh, which another python3 earlier
	// in PATH (pyenv, a virtualenv) would shadow.
	env := append(os.Environ(), "PATH="+filepath.Dir(nbdsh)+string(os.PathListSeparator)+os.Getenv("PATH"))

	const size = 1 << 20
	dev := nbdNewMemDevice(size)
	for i := range dev.data {
		dev.data[i] = 0xff
	}
	srv := nbdStartServer(t, dev, "")

	// Layout, one 4 KiB block each: 0 plain write, 1 FUA write, 2 trim,
	// 3 write zeroes (may trim), 4 write zeroes NO_HOLE|FUA, rest untouched.
	script := strings.Join([]string{
		"assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero() and h.can_multi_conn()",
		"assert h.get_size() == " + fmt.Sprint(size),
		"h.pwrite(b'\\x01' * 4096, 0)",
		"h.pwrite(b'\\x02' * 4096, 4096, nbd.CMD_FLAG_FUA)",
		"h.flush()",
		"h.trim(4096, 8192)",
		"h.zero(4096, 12288)",
		"h.zero(4096, 16384, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)",
		"assert h.pread(4096, 0) == b'\\x01' * 4096",
		// FUA on a read is legal once SEND_FUA is advertised, but libnbd's
		// strict mode refuses it: send it anyway.
		"h.set_strict_mode(0)",
		"assert h.pread(4096, 4096, nbd.CMD_FLAG_FUA) == b'\\x02' * 4096",
		"assert h.pread(12288, 8192) == bytes(12288)",
		"assert h.pread(4096, 20480) == b'\\xff' * 4096",
		"print('ok')",
	}, "\n")
	out := nbdRun(t, env, nbdsh, "-u", srv.uri(""), "-c", script)
	must.EqOp(t, "ok", strings.TrimSpace(out))

	want := bytes.Repeat([]byte{0xff}, size)
	copy(want, bytes.Repeat([]byte{1}, 4096))
	copy(want[4096:], bytes.Repeat([]byte{2}, 4096))
	clear(want[8192:20480])
	must.True(t, bytes.Equal(want, dev.contents()), must.Sprint("device content is not what the commands wrote"))

	// pwrite, pwrite FUA, zero NO_HOLE|FUA -> three writes, two with fua;
	// trim and zero without NO_HOLE -> two trims; one explicit flush.
	must.Eq(t, nbdMemStats{Reads: 4, Writes: 3, FUAWrites: 2, Flushes: 1, Trims: 2}, dev.snapshot())
}

// BenchmarkNBDWrite1MiB measures pipelined 1 MiB writes over a unix socket.
func BenchmarkNBDWrite1MiB(b *testing.B) {
	const size = 64 << 20
	const chunk = 1 << 20
	dev := nbdNewMemDevice(size)
	sock := filepath.Join(b.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	must.NoError(b, err)
	srv := NewNBDServer(dev, "", hclog.NewNullLogger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()

	conn, err := net.Dial("unix", sock)
	must.NoError(b, err)
	defer conn.Close()
	r := bufio.NewReader(conn)
	_, err = io.ReadFull(r, make([]byte, nbdHandshakeGreetingLen))
	must.NoError(b, err)
	_, err = conn.Write(append(nbdClientFlagsBytes(nbdFlagCFixedNewstyle|nbdFlagCNoZeroes), nbdOptBytes(nbdOptExportName, nil)...))
	must.NoError(b, err)
	_, err = io.ReadFull(r, make([]byte, 10))
	must.NoError(b, err)

	payload := make([]byte, chunk)
	hdr := make([]byte, nbdSimpleReplyHeaderLen)
	replies := make(chan error, 1)
	b.SetBytes(chunk)
	b.ResetTimer()
	go func() {
		for range b.N {
			if _, err := io.ReadFull(r, hdr); err != nil {
				replies <- err
				return
			}
			if e := binary.BigEndian.Uint32(hdr[4:]); e != 0 {
				replies <- fmt.Errorf("errno %d", e)
				return
			}
		}
		replies <- nil
	}()
	for i := range b.N {
		off := uint64(i%(size/chunk)) * chunk
		if _, err := conn.Write(nbdReqBytes(0, nbdCmdWrite, uint64(i), off, chunk, nil)); err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Write(payload); err != nil {
			b.Fatal(err)
		}
	}
	must.NoError(b, <-replies)
}
