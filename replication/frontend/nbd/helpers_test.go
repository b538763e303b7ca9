package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/internal/replicatest"
)

// ---------------------------------------------------------------------------
// The Device: in memory, recording how it was called.

func nbdNewMemDevice(size int) *replicatest.MemDevice {
	return replicatest.NewMemDevice(make([]byte, size))
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
	dev  *replicatest.MemDevice
	sock string
	logs *nbdTestLog
}

// uri is the NBD URI of export name on the test server.
func (s *nbdTestServer) uri(name string) string {
	return "nbd+unix:///" + name + "?socket=" + s.sock
}

func nbdStartServer(t *testing.T, dev *replicatest.MemDevice, exportName string) *nbdTestServer {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	must.NoError(t, err)
	log, logs := nbdTestLogger(t)
	srv := NewServer(dev, exportName, log)
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
