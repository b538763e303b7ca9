package mount

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/moby/sys/mountinfo"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/frontend/fuse"
)

func testLog(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: tWriter{t}})
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("mount tests attach loop devices and mount file systems: run them as root")
	}
	for _, tool := range []string{"blkid", "mkfs.ext4", "mkfs.xfs", "e2fsck"} {
		if toolPath(tool) == tool {
			t.Fatalf("%s not found: run `make deps`", tool)
		}
	}
}

// sparseFile makes a sparse backing file of size bytes.
func sparseFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "volume.img")
	f, err := os.Create(p)
	must.NoError(t, err)
	must.NoError(t, f.Truncate(size))
	must.NoError(t, f.Close())
	return p
}

// stageReq returns a request for backing, and registers a cleanup that
// removes whatever is left (mounts, loop devices) even if the test failed.
func stageReq(t *testing.T, backing, fsType string) StageRequest {
	t.Helper()
	dir := t.TempDir()
	req := StageRequest{BackingFile: backing, StagingPath: filepath.Join(dir, "staging"), FSType: fsType,
		StateFile: filepath.Join(dir, "stage.json"), Log: testLog(t)}
	t.Cleanup(func() {
		err := Unstage(context.Background(), UnstageRequest{BackingFile: backing, StagingPath: req.StagingPath, Lazy: true, Log: req.Log})
		if err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return req
}

func writeMarker(t *testing.T, dir, text string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "marker"))
	must.NoError(t, err)
	_, err = f.WriteString(text)
	must.NoError(t, err)
	must.NoError(t, f.Sync())
	must.NoError(t, f.Close())
}

// TestStageFormatsOnceAndNeverReformats, for ext4 and xfs: the first Stage
// makes the file system, later ones find it (a marker file survives), a
// repeated Stage is a no-op, and asking for the other type is refused with
// a typed error that leaves the file system untouched.
func TestStageFormatsOnceAndNeverReformats(t *testing.T) {
	requireRoot(t)
	for _, c := range []struct{ fs, other string }{{FSExt4, FSXFS}, {FSXFS, FSExt4}} {
		t.Run(c.fs, func(t *testing.T) {
			ctx := context.Background()
			backing := sparseFile(t, 512<<20) // mkfs.xfs wants at least 300 MiB
			req := stageReq(t, backing, c.fs)
			req.MountOptions = []string{"noatime"}

			st, err := Stage(ctx, req)
			must.NoError(t, err)
			must.True(t, st.Formatted)
			must.True(t, st.DirectIO, must.Sprint("loop device should do direct I/O"))
			writeMarker(t, req.StagingPath, "first")

			again, err := Stage(ctx, req)
			must.NoError(t, err)
			must.False(t, again.Formatted)
			must.Eq(t, st.Device, again.Device)
			mounts, err := readMounts()
			must.NoError(t, err)
			at := mountsAt(mounts, req.StagingPath)
			must.Eq(t, 1, len(at), must.Sprint("a repeated Stage must not mount twice"))
			must.True(t, hasOption(at[0].Options, "noatime"))

			unreq := UnstageRequest{BackingFile: backing, StagingPath: req.StagingPath, StateFile: req.StateFile, Log: req.Log}
			must.NoError(t, Unstage(ctx, unreq))
			must.NoError(t, Unstage(ctx, unreq)) // idempotent
			loops, err := loopsOf(backing)
			must.NoError(t, err)
			must.Zero(t, len(loops))

			st, err = Stage(ctx, req)
			must.NoError(t, err)
			must.False(t, st.Formatted)
			got, err := os.ReadFile(filepath.Join(req.StagingPath, "marker"))
			must.NoError(t, err)
			must.Eq(t, "first", string(got))
			must.NoError(t, Unstage(ctx, unreq))

			wrong := req
			wrong.FSType = c.other
			_, err = Stage(ctx, wrong)
			var mm *FSTypeMismatchError
			must.True(t, errors.As(err, &mm), must.Sprint(err))
			must.ErrorIs(t, err, ErrFSTypeMismatch)
			must.Eq(t, c.fs, mm.Found)
			must.Eq(t, c.other, mm.Want)
			loops, err = loopsOf(backing)
			must.NoError(t, err)
			must.Zero(t, len(loops), must.Sprint("a refused Stage leaves no loop device"))

			st, err = Stage(ctx, req)
			must.NoError(t, err)
			must.False(t, st.Formatted)
			got, err = os.ReadFile(filepath.Join(req.StagingPath, "marker"))
			must.NoError(t, err)
			must.Eq(t, "first", string(got))
		})
	}
}

// TestStageRefusesVolumeTooSmall: a volume too small for its file system
// is refused with the size rule's message before mkfs runs (mkfs.xfs
// would fail with its usage text), and no loop device is left attached.
func TestStageRefusesVolumeTooSmall(t *testing.T) {
	requireRoot(t)
	for _, c := range []struct {
		fs   string
		size int64
		want string
	}{
		{FSXFS, 256 << 20, "xfs needs a volume of at least 300MiB, not 256MiB"},
		{FSExt4, 4 << 20, "ext4 needs a volume of at least 8MiB, not 4MiB"},
	} {
		t.Run(c.fs, func(t *testing.T) {
			backing := sparseFile(t, c.size)
			_, err := Stage(context.Background(), stageReq(t, backing, c.fs))
			must.ErrorIs(t, err, ErrTooSmall)
			must.StrContains(t, err.Error(), c.want)
			must.StrNotContains(t, err.Error(), "mkfs")
			loops, err := loopsOf(backing)
			must.NoError(t, err)
			must.SliceEmpty(t, loops)
			data, err := os.ReadFile(backing)
			must.NoError(t, err)
			must.Eq(t, -1, slices.IndexFunc(data, func(b byte) bool { return b != 0 }), must.Sprint("nothing was written"))
		})
	}
}

// TestStageRefusesUnknownContent: a device holding something that is not a
// file system (here a swap signature) is never formatted.
func TestStageRefusesUnknownContent(t *testing.T) {
	requireRoot(t)
	backing := sparseFile(t, 64<<20)
	f, err := os.OpenFile(backing, os.O_RDWR, 0)
	must.NoError(t, err)
	_, err = f.WriteAt([]byte("SWAPSPACE2"), 4096-10)
	must.NoError(t, err)
	_, err = f.WriteAt([]byte{1, 0, 0, 0, 0xff, 0x3f, 0, 0}, 1024) // version 1, last page
	must.NoError(t, err)
	must.NoError(t, f.Close())
	_, err = Stage(context.Background(), stageReq(t, backing, FSExt4))
	must.ErrorIs(t, err, ErrUnknownContent)
	data, err := os.ReadFile(backing)
	must.NoError(t, err)
	must.Eq(t, "SWAPSPACE2", string(data[4096-10:4096]))
}

// TestStageNeverFormatsWrittenVolume (issue #10, scenario 1): a volume
// that has been written to and reads as blank is never formatted (its
// data is lost or was served from the wrong copy); the device is left as
// it was. This node's own interrupted first mkfs is still redone.
func TestStageNeverFormatsWrittenVolume(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	backing := sparseFile(t, 64<<20)
	req := stageReq(t, backing, FSExt4)
	req.Written = true
	_, err := Stage(ctx, req)
	must.ErrorIs(t, err, ErrHoldsData)
	data, err := os.ReadFile(backing)
	must.NoError(t, err)
	// Not must.Eq on the 64 MiB: comparing with go-cmp took minutes.
	must.Eq(t, -1, slices.IndexFunc(data, func(b byte) bool { return b != 0 }), must.Sprint("Stage wrote to a volume that holds data"))

	must.NoError(t, saveState(req.StateFile, stageState{Step: stepProbe, Formatting: true, FSType: FSExt4}))
	st, err := Stage(ctx, req)
	must.NoError(t, err)
	must.True(t, st.Formatted)
}

// TestStageRedoesInterruptedFormat: a checkpoint saying a mkfs began and
// did not finish makes Stage format again, even over a signature of the
// asked type; without it, that file system would be kept.
func TestStageRedoesInterruptedFormat(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	backing := sparseFile(t, 64<<20)
	req := stageReq(t, backing, FSExt4)
	_, err := Stage(ctx, req)
	must.NoError(t, err)
	writeMarker(t, req.StagingPath, "half-made")
	must.NoError(t, Unstage(ctx, UnstageRequest{BackingFile: backing, StagingPath: req.StagingPath, StateFile: req.StateFile}))

	must.NoError(t, saveState(req.StateFile, stageState{Step: stepProbe, Formatting: true, FSType: FSExt4}))
	st, err := Stage(ctx, req)
	must.NoError(t, err)
	must.True(t, st.Formatted)
	_, err = os.Stat(filepath.Join(req.StagingPath, "marker"))
	must.ErrorIs(t, err, os.ErrNotExist)
	saved, err := loadState(req.StateFile)
	must.NoError(t, err)
	must.False(t, saved.Formatting)
	must.Eq(t, stepDone, saved.Step)
}

func TestPublishBindReadOnly(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	backing := sparseFile(t, 64<<20)
	req := stageReq(t, backing, FSExt4)
	_, err := Stage(ctx, req)
	must.NoError(t, err)
	writeMarker(t, req.StagingPath, "x")
	rw, ro := filepath.Join(t.TempDir(), "rw"), filepath.Join(t.TempDir(), "ro")
	t.Cleanup(func() { Unpublish(rw, nil); Unpublish(ro, nil) })

	must.NoError(t, Publish(req.StagingPath, rw, false))
	must.NoError(t, Publish(req.StagingPath, rw, false))
	must.NoError(t, os.WriteFile(filepath.Join(rw, "w"), []byte("ok"), 0o600))
	must.NoError(t, Publish(req.StagingPath, ro, true))
	got, err := os.ReadFile(filepath.Join(ro, "marker"))
	must.NoError(t, err)
	must.Eq(t, "x", string(got))
	must.ErrorIs(t, os.WriteFile(filepath.Join(ro, "w2"), []byte("no"), 0o600), unix.EROFS)
	// Asking for the other mode adjusts the existing bind.
	must.NoError(t, Publish(req.StagingPath, ro, false))
	must.NoError(t, os.WriteFile(filepath.Join(ro, "w2"), []byte("now"), 0o600))

	must.ErrorIs(t, Publish(filepath.Join(t.TempDir(), "nothing"), filepath.Join(t.TempDir(), "t"), false), ErrNotStaged)
	must.NoError(t, Unpublish(rw, nil))
	must.NoError(t, Unpublish(rw, nil))
	must.NoError(t, Unpublish(ro, nil))
	// The staging mount is untouched by unpublishing.
	_, err = os.Stat(filepath.Join(req.StagingPath, "w2"))
	must.NoError(t, err)
}

// TestParseMountInfo: mountinfo lines as github.com/moby/sys/mountinfo
// reads them into what Stage, Publish and Recover look at (escaped mount
// points, device numbers, per-mount options, fuse subtypes).
func TestParseMountInfo(t *testing.T) {
	in := "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n" +
		"40 36 0:52 / /run/fuse rw,nosuid,nodev shared:5 - fuse.saddlebag saddlebag:vol rw,user_id=0\n"
	infos, err := mountinfo.GetMountsFromReader(strings.NewReader(in), nil)
	must.NoError(t, err)
	got := entries(infos)
	must.Eq(t, []mountEntry{
		{ID: 36, Major: 98, Minor: 0, Root: "/mnt1", Point: "/mnt two", Options: "rw,noatime", FSType: "ext3", Source: "/dev/root"},
		{ID: 40, Major: 0, Minor: 52, Root: "/", Point: "/run/fuse", Options: "rw,nosuid,nodev", FSType: "fuse.saddlebag", Source: "saddlebag:vol"},
	}, got)
	_, err = mountinfo.GetMountsFromReader(strings.NewReader("36 35 98:0 /mnt1 /mnt2 rw\n"), nil)
	must.Error(t, err)
}

func TestParseMountOptions(t *testing.T) {
	flags, data := ParseMountOptions([]string{"noatime,discard", "ro", "errors=remount-ro", "discard", "rw"})
	must.Eq(t, uintptr(unix.MS_NOATIME), flags)
	must.Eq(t, "discard,errors=remount-ro", data)
}

// fuseStage serves dev through a FUSE file and stages ext4 on it.
func fuseStage(t *testing.T, dev replication.Device) (*fuse.Mount, StageRequest, RecoverRequest) {
	return fuseStageWith(t, fuse.New, dev)
}

// fuseStageWith is fuseStage with the given way of serving the FUSE file
// (fuse.NewHandoff: relayed).
func fuseStageWith(t *testing.T, mountFUSE func(context.Context, replication.Device, fuse.Config) (*fuse.Mount, error),
	dev replication.Device) (*fuse.Mount, StageRequest, RecoverRequest) {
	t.Helper()
	m, err := mountFUSE(context.Background(), dev, fuse.Config{Dir: t.TempDir(), Name: "vol", HungTimeout: -1, Log: testLog(t)})
	must.NoError(t, err)
	rreq := RecoverRequest{FUSEDir: m.Dir(), BackingFile: m.Path(), ProbeTimeout: 500 * time.Millisecond, Log: testLog(t)}
	t.Cleanup(func() {
		// Whatever the test left: tear it all down, then stop the server.
		rr := rreq
		rr.Force = true
		if _, err := Recover(context.Background(), rr); err != nil {
			t.Errorf("cleanup recover: %v", err)
		}
		m.Close()
	})
	req := stageReq(t, m.Path(), FSExt4)
	_, err = Stage(context.Background(), req)
	must.NoError(t, err)
	return m, req, rreq
}

// TestRecoverHungServer: a server whose device stops answering blocks I/O
// forever; Recover sees the probe time out, aborts the connection and
// leaves no mount or loop device behind.
func TestRecoverHungServer(t *testing.T) {
	requireRoot(t)
	dev := newMemDevice(64 << 20)
	m, req, rreq := fuseStage(t, dev)
	writeMarker(t, req.StagingPath, "before the hang")
	target := filepath.Join(t.TempDir(), "target")
	must.NoError(t, Publish(req.StagingPath, target, false))

	// Alive: refused, nothing touched.
	res, err := Recover(context.Background(), rreq)
	must.ErrorIs(t, err, ErrServerAlive)
	must.Eq(t, ServerAlive, res.Server)

	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	dev.block.Store(&release)

	res, err = Recover(context.Background(), rreq)
	must.NoError(t, err)
	must.Eq(t, ServerHung, res.Server)
	must.True(t, res.Aborted)
	must.SliceContainsAll(t, res.Unmounted, []string{req.StagingPath, target, m.Dir()})
	assertNothingLeft(t, rreq.BackingFile, req.StagingPath, target, m.Dir())

	again, err := Recover(context.Background(), rreq)
	must.NoError(t, err)
	must.Eq(t, ServerAbsent, again.Server)
	unblock()
	<-m.Done()
}

func assertNothingLeft(t *testing.T, backing string, paths ...string) {
	t.Helper()
	loops, err := waitLoopsGone(backing, 5*time.Second)
	must.NoError(t, err)
	must.Zero(t, len(loops), must.Sprintf("loop devices still bound to %s: %v", backing, loops))
	mounts, err := readMounts()
	must.NoError(t, err)
	for _, p := range paths {
		must.Zero(t, len(mountsAt(mounts, p)), must.Sprintf("%s is still a mount point", p))
	}
}
