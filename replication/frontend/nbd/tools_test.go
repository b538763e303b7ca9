package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/internal/replicatest"
)

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
	must.True(t, bytes.Equal(src, dev.Contents()), must.Sprint("device content differs from the source after nbdcopy in"))
	st := dev.Stats()
	must.Positive(t, st.Writes)
	must.Positive(t, st.Flushes)
	must.Zero(t, st.OutOfRange)

	nbdRun(t, os.Environ(), nbdcopy, uri, dstPath)
	dst, err := os.ReadFile(dstPath)
	must.NoError(t, err)
	must.EqOp(t, sha256.Sum256(src), sha256.Sum256(dst))
	must.Positive(t, dev.Stats().Reads)
}

func TestNBDShCommands(t *testing.T) {
	nbdsh := nbdTool(t, "nbdsh", "python3-libnbd")
	// nbdsh runs `python3 -m nbd`; the nbd module is installed for the
	// distribution's python3 next to nbdsh, which another python3 earlier
	// in PATH (pyenv, a virtualenv) would shadow.
	env := append(os.Environ(), "PATH="+filepath.Dir(nbdsh)+string(os.PathListSeparator)+os.Getenv("PATH"))

	const size = 1 << 20
	dev := replicatest.NewMemDevice(bytes.Repeat([]byte{0xff}, size))
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
	must.True(t, bytes.Equal(want, dev.Contents()), must.Sprint("device content is not what the commands wrote"))

	// pwrite, pwrite FUA, zero NO_HOLE|FUA -> three writes, two with fua;
	// trim and zero without NO_HOLE -> two trims; one explicit flush.
	must.Eq(t, replicatest.MemStats{Reads: 4, Writes: 3, FUAWrites: 2, Flushes: 1, Trims: 2}, dev.Stats())
}

// BenchmarkNBDWrite1MiB measures pipelined 1 MiB writes over a unix socket.
func BenchmarkNBDWrite1MiB(b *testing.B) {
	const size = 64 << 20
	const chunk = 1 << 20
	dev := nbdNewMemDevice(size)
	sock := filepath.Join(b.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	must.NoError(b, err)
	srv := NewServer(dev, "", hclog.NewNullLogger())
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
