package nbd

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// nbdFuzzDevSize is small so that random offsets often land inside.
const nbdFuzzDevSize = 64 << 10

// nbdFuzzSeeds are client byte streams (everything after the server
// greeting), by corpus file name. They are checked into
// testdata/fuzz/FuzzNBDConn; TestNBDFuzzCorpus keeps the files in sync
// (NBD_UPDATE_CORPUS=1 rewrites them).
func nbdFuzzSeeds() map[string][]byte {
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	flags := nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes)
	goDefault := nbdOptBytes(nbdOptGo, nbdGoData("", nbdInfoBlockSize))
	sector := bytes.Repeat([]byte{0x5a}, 512)
	disc := nbdReqBytes(0, nbdCmdDisc, 99, 0, 0, nil)
	return map[string][]byte{
		"go_write_read": cat(flags, goDefault,
			nbdReqBytes(0, nbdCmdWrite, 1, 512, 512, sector),
			nbdReqBytes(0, nbdCmdRead, 2, 512, 512, nil),
			nbdReqBytes(0, nbdCmdFlush, 3, 0, 0, nil),
			disc),
		"export_name_fua_write": cat(nbdClientFlagsBytes(nbdFlagCFixedNewstyle),
			nbdOptBytes(nbdOptExportName, []byte("vol0")),
			nbdReqBytes(nbdCmdFlagFUA, nbdCmdWrite, 1, 0, 512, sector),
			nbdReqBytes(0, nbdCmdRead, 2, 0, 4096, nil),
			disc),
		"list_info_abort": cat(flags,
			nbdOptBytes(nbdOptList, nil),
			nbdOptBytes(nbdOptInfo, nbdGoData("vol0", nbdInfoName, nbdInfoBlockSize)),
			nbdOptBytes(nbdOptAbort, nil)),
		"refused_options_then_trim_zero": cat(flags,
			nbdOptBytes(nbdOptStartTLS, nil),
			nbdOptBytes(nbdOptStructuredReply, nil),
			nbdOptBytes(4242, []byte("junk")),
			nbdOptBytes(nbdOptGo, nbdGoData("nope")),
			goDefault,
			nbdReqBytes(0, nbdCmdTrim, 1, 0, 4096, nil),
			nbdReqBytes(nbdCmdFlagNoHole|nbdCmdFlagFUA, nbdCmdWriteZeroes, 2, 4096, 4096, nil),
			nbdReqBytes(0, nbdCmdWriteZeroes, 3, 8192, 4096, nil),
			disc),
		"out_of_range": cat(flags, goDefault,
			nbdReqBytes(0, nbdCmdRead, 1, nbdFuzzDevSize-256, 512, nil),
			nbdReqBytes(0, nbdCmdWrite, 2, nbdFuzzDevSize, 512, sector),
			nbdReqBytes(0, nbdCmdTrim, 3, ^uint64(0)-10, 512, nil),
			nbdReqBytes(0, 42, 4, 0, 0, nil),
			disc),
		"bad_option_magic": cat(flags, []byte("IHAVEOPX"), goDefault[8:]),
		"bad_request_magic": cat(flags, goDefault,
			[]byte{0x25, 0x60, 0x95, 0x14}, nbdReqBytes(0, nbdCmdRead, 1, 0, 512, nil)[4:]),
		"truncated_option":  cat(flags, goDefault[:len(goDefault)-3]),
		"truncated_write":   cat(flags, goDefault, nbdReqBytes(0, nbdCmdWrite, 1, 0, 4096, sector)),
		"oversize_option":   cat(flags, nbdOptBytes(nbdOptGo, nil)[:12], []byte{0, 1, 0, 1}),
		"empty":             {},
		"flags_only_no_opt": flags,
	}
}

// nbdFuzzConn is a net.Conn whose peer sends in and then half-closes, and
// swallows everything the server writes. Unlike net.Pipe it lets the server
// read EOF while its replies still go out, and it behaves the same on every
// run, so a crasher reproduces.
type nbdFuzzConn struct {
	in     *bytes.Reader
	mu     sync.Mutex
	closed bool
	wrote  int
}

func (c *nbdFuzzConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.in.Read(p)
}

func (c *nbdFuzzConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	c.wrote += len(p)
	return len(p), nil
}

func (c *nbdFuzzConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *nbdFuzzConn) LocalAddr() net.Addr                { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *nbdFuzzConn) RemoteAddr() net.Addr               { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *nbdFuzzConn) SetDeadline(t time.Time) error      { return nil }
func (c *nbdFuzzConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *nbdFuzzConn) SetWriteDeadline(t time.Time) error { return nil }

// FuzzNBDConn feeds arbitrary bytes to one server connection as the client
// stream after the greeting. The connection must end (no hang, no panic),
// the server must never pass an out-of-range request to the device, and
// without a single device write or trim the device must be unchanged.
func FuzzNBDConn(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzNBDConn (see nbdFuzzSeeds).
	f.Fuzz(func(t *testing.T, in []byte) {
		dev := nbdNewMemDevice(nbdFuzzDevSize)
		srv := NewServer(dev, "vol0", hclog.NewNullLogger())
		conn := &nbdFuzzConn{in: bytes.NewReader(in)}
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.serveConn(context.Background(), conn, 1)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("connection handler did not return for input %q", in)
		}
		st := dev.Stats()
		must.Zero(t, st.OutOfRange, must.Sprint("server passed an out-of-range request to the device"))
		must.GreaterEq(t, nbdHandshakeGreetingLen, conn.wrote)
		if st.Writes == 0 && st.Trims == 0 {
			must.True(t, bytes.Equal(make([]byte, nbdFuzzDevSize), dev.Contents()), must.Sprint("device changed without a write"))
		}
	})
}

// TestNBDFuzzCorpus checks that the committed seed corpus matches
// nbdFuzzSeeds; run with NBD_UPDATE_CORPUS=1 to rewrite it.
func TestNBDFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzNBDConn")
	update := os.Getenv("NBD_UPDATE_CORPUS") == "1"
	if update {
		must.NoError(t, os.MkdirAll(dir, 0o755))
	}
	for name, seed := range nbdFuzzSeeds() {
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", seed)
		path := filepath.Join(dir, "seed_"+name)
		if update {
			must.NoError(t, os.WriteFile(path, []byte(want), 0o644))
			continue
		}
		got, err := os.ReadFile(path)
		must.NoError(t, err, must.Sprint("missing seed file: run NBD_UPDATE_CORPUS=1 go test -run TestNBDFuzzCorpus"))
		must.EqOp(t, want, string(got), must.Sprintf("stale seed file %s: run NBD_UPDATE_CORPUS=1 go test -run TestNBDFuzzCorpus", path))
	}
}
