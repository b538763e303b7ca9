package fdkeeper

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoenig/test/must"
	"github.com/shoenig/test/wait"
)

// TestKeeperHoldsDescriptors: a pipe's write end put in the keeper and
// closed by its owner still works through the copy List returns, with
// its state; Drop closes the keeper's copy (the pipe reads EOF once no
// copy is left); a put under the same name replaces the entry.
func TestKeeperHoldsDescriptors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "k", "keeper.sock")
	k := New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Serve(ctx, sock) }()
	t.Cleanup(func() { cancel(); <-done; k.Close() })
	c := Client{Path: sock}
	must.Wait(t, untilOK(func() bool { _, err := c.Names(); return err == nil }))
	st, err := os.Stat(sock)
	must.NoError(t, err)
	must.Eq(t, os.FileMode(0o600), st.Mode().Perm())

	r, w, err := os.Pipe()
	must.NoError(t, err)
	defer r.Close()
	must.NoError(t, c.Put("vol-a", []byte(`{"x":1}`), w))
	w.Close() // only the keeper holds the write end now

	names, err := c.Names()
	must.NoError(t, err)
	must.Eq(t, []string{"vol-a"}, names)
	list, err := c.List()
	must.NoError(t, err)
	must.Len(t, 1, list)
	must.Eq(t, "vol-a", list[0].Name)
	must.Eq(t, `{"x":1}`, string(list[0].Meta))
	_, err = list[0].File.Write([]byte("through the kept descriptor"))
	must.NoError(t, err)
	list[0].File.Close()
	buf := make([]byte, 64)
	n, err := r.Read(buf)
	must.NoError(t, err)
	must.Eq(t, "through the kept descriptor", string(buf[:n]))

	// Replacing closes the old copy; dropping closes the new one.
	r2, w2, err := os.Pipe()
	must.NoError(t, err)
	defer r2.Close()
	must.NoError(t, c.Put("vol-a", []byte(`{"x":2}`), w2))
	w2.Close()
	_ = r.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = r.Read(buf)
	must.ErrorIs(t, err, io.EOF, must.Sprint("the replaced descriptor is still open in the keeper"))
	must.NoError(t, c.Drop("vol-a"))
	_ = r2.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = r2.Read(buf)
	must.ErrorIs(t, err, io.EOF, must.Sprint("the dropped descriptor is still open in the keeper"))
	names, err = c.Names()
	must.NoError(t, err)
	must.SliceEmpty(t, names)
	must.NoError(t, c.Drop("never-kept"))
}

func untilOK(f func() bool) *wait.Constraint {
	return wait.InitialSuccess(wait.BoolFunc(f), wait.Timeout(10*time.Second), wait.Gap(20*time.Millisecond))
}

// TestKeeperWatchesNodeClients: a client that names its FUSE directory
// is watched by its pid (from the socket's peer credentials); one that
// does not, or names a relative one, is not; a live process is left
// alone by the watch.
func TestKeeperWatchesNodeClients(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "keeper.sock")
	k := New(nil)
	k.abortConn = func(conn uint32) error { t.Errorf("aborted connection %d of a live process", conn); return nil }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Serve(ctx, sock) }()
	t.Cleanup(func() { cancel(); <-done; k.Close() })
	must.Wait(t, untilOK(func() bool { _, err := (Client{Path: sock}).Names(); return err == nil }))
	watched := func() map[int]string {
		k.mu.Lock()
		defer k.mu.Unlock()
		out := map[int]string{}
		for pid, p := range k.procs {
			out[pid] = p.fuseDir
		}
		return out
	}
	must.MapEmpty(t, watched())
	_, err := Client{Path: sock, FUSEDir: "relative/fuse"}.Names()
	must.NoError(t, err)
	must.MapEmpty(t, watched())
	_, err = Client{Path: sock, FUSEDir: "/run/saddlebag/csi-n1/fuse/"}.Names()
	must.NoError(t, err)
	must.Eq(t, map[int]string{os.Getpid(): "/run/saddlebag/csi-n1/fuse"}, watched())
	k.check(time.Now().Add(time.Hour))
	must.Eq(t, map[int]string{os.Getpid(): "/run/saddlebag/csi-n1/fuse"}, watched())
}

// lockedBuffer is a bytes.Buffer a child process writes while the test
// reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestKeeperSaysWhyItCannotWatch: a keeper in a pid namespace of its own
// (the docker form without pid_mode = "host") gets pid 0 from the peer
// credentials of a node process outside it. It still keeps descriptors
// for it, but cannot watch it (so could never free it, stuck exiting):
// it says so at Error, naming the cause and the fix, once, not on every
// request.
func TestKeeperSaysWhyItCannotWatch(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "keeper.sock")
	var out lockedBuffer
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serveHelperEnv+"="+sock)
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	must.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c := Client{Path: sock, FUSEDir: "/run/saddlebag/csi-n1/fuse"}
	must.Wait(t, untilOK(func() bool { _, err := c.Names(); return err == nil }))
	r, w, err := os.Pipe()
	must.NoError(t, err)
	defer r.Close()
	must.NoError(t, c.Put("vol-a", []byte("state"), w))
	w.Close()
	names, err := c.Names()
	must.NoError(t, err)
	must.Eq(t, []string{"vol-a"}, names)
	log := out.String()
	must.StrContains(t, log, "[ERROR]")
	must.StrContains(t, log, "its pid is not visible in the keeper's pid namespace")
	must.StrContains(t, log, `pid_mode = "host"`)
	must.StrContains(t, log, "fuse_dir=/run/saddlebag/csi-n1/fuse")
	must.Eq(t, 1, strings.Count(log, "its pid is not visible"), must.Sprint(log))
	must.StrNotContains(t, log, "watching node process")
}
