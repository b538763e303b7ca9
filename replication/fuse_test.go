package replication

import (
	"bytes"
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
)

// countingDevice wraps a Device and counts the calls that reached it.
type countingDevice struct {
	Device
	flushes, trims atomic.Int64
	// fail, when set, is returned by every call instead of calling Device.
	fail atomic.Pointer[error]
	// block, when set, makes writes wait until it is closed.
	block atomic.Pointer[chan struct{}]
}

func (d *countingDevice) err() error {
	if e := d.fail.Load(); e != nil {
		return *e
	}
	return nil
}

func (d *countingDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if ch := d.block.Load(); ch != nil {
		<-*ch
	}
	if err := d.err(); err != nil {
		return err
	}
	return d.Device.WriteAt(ctx, p, off, fua)
}

func (d *countingDevice) Flush(ctx context.Context) error {
	if err := d.err(); err != nil {
		return err
	}
	d.flushes.Add(1)
	return d.Device.Flush(ctx)
}

func (d *countingDevice) Trim(ctx context.Context, off, n int64) error {
	if err := d.err(); err != nil {
		return err
	}
	d.trims.Add(1)
	return d.Device.Trim(ctx, off, n)
}

// mountTestFUSE serves a 3-replica engine of size bytes through FUSE.
func mountTestFUSE(t *testing.T, size int64, hung time.Duration) (*FUSEMount, *countingDevice, []*testReplica) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("FUSE tests mount file systems and must run as root")
	}
	var reps []*testReplica
	for i := 0; i < 3; i++ {
		reps = append(reps, startTestReplica(t, t.TempDir()))
	}
	eng := startTestEngine(t, "vol", size, 1, nil, reps...)
	dev := &countingDevice{Device: eng}
	m, err := MountFUSE(context.Background(), dev, FUSEConfig{Dir: t.TempDir(), Name: "vol", HungTimeout: hung, Log: testLogger(t)})
	must.NoError(t, err)
	t.Cleanup(func() { must.NoError(t, m.Close()) })
	return m, dev, reps
}

func TestFUSEFileReadWriteFsync(t *testing.T) {
	const size = 8 << 20
	m, dev, reps := mountTestFUSE(t, size, 0)

	st, err := os.Stat(m.Path())
	must.NoError(t, err)
	must.Eq(t, int64(size), st.Size())
	must.True(t, st.Mode().IsRegular())
	ents, err := os.ReadDir(m.Dir())
	must.NoError(t, err)
	must.Eq(t, 1, len(ents))
	must.Eq(t, "vol", ents[0].Name())

	f, err := os.OpenFile(m.Path(), os.O_RDWR|unix.O_DIRECT, 0)
	must.NoError(t, err)
	defer f.Close()
	buf := alignedBuf(1 << 20)
	for i := range buf {
		buf[i] = byte(i*13 + 7)
	}
	_, err = f.WriteAt(buf, 3<<20)
	must.NoError(t, err)

	before := dev.flushes.Load()
	must.NoError(t, f.Sync())
	must.Greater(t, before, dev.flushes.Load(), must.Sprint("fsync(2) must reach Device.Flush before it returns"))

	got := alignedBuf(1 << 20)
	_, err = f.ReadAt(got, 3<<20)
	must.NoError(t, err)
	must.True(t, bytes.Equal(buf, got))

	// Every replica holds the data once fsync returned.
	for _, r := range reps {
		data, err := os.ReadFile(r.store.DataPath("vol"))
		must.NoError(t, err)
		must.True(t, bytes.Equal(buf, data[3<<20:4<<20]), must.Sprint("replica ", r.addr))
	}

	// Reads at and past the end are short, writes past it fail.
	n, _ := f.ReadAt(got[:4096], size)
	must.Zero(t, n)
	_, err = f.WriteAt(buf[:4096], size)
	must.ErrorIs(t, err, unix.EFBIG)
	// The size is fixed.
	must.ErrorIs(t, os.Truncate(m.Path(), 0), unix.EPERM)
}

func TestFUSEPunchHoleTrims(t *testing.T) {
	m, dev, _ := mountTestFUSE(t, 4<<20, 0)
	f, err := os.OpenFile(m.Path(), os.O_RDWR, 0)
	must.NoError(t, err)
	defer f.Close()
	_, err = f.WriteAt(bytes.Repeat([]byte{0xAB}, 64<<10), 0)
	must.NoError(t, err)
	must.NoError(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4096, 8192))
	must.Eq(t, int64(1), dev.trims.Load())
	got := make([]byte, 16384)
	_, err = f.ReadAt(got, 0)
	must.NoError(t, err)
	must.True(t, bytes.Equal(bytes.Repeat([]byte{0xAB}, 4096), got[:4096]))
	must.True(t, bytes.Equal(make([]byte, 8192), got[4096:12288]), must.Sprint("punched range reads back as zeroes"))
	must.True(t, bytes.Equal(bytes.Repeat([]byte{0xAB}, 4096), got[12288:]))
	// Plain preallocation reserves nothing and is refused.
	must.ErrorIs(t, unix.Fallocate(int(f.Fd()), 0, 0, 4096), unix.EOPNOTSUPP)
}

func TestFUSEErrnoMapping(t *testing.T) {
	m, dev, _ := mountTestFUSE(t, 4<<20, 0)
	f, err := os.OpenFile(m.Path(), os.O_RDWR, 0)
	must.NoError(t, err)
	defer f.Close()
	cases := []struct {
		err  error
		want unix.Errno
	}{
		{ErrFenced, unix.EIO},
		{ErrNoSpace, unix.ENOSPC},
		{ErrNoReplicas, unix.EIO},
	}
	for _, c := range cases {
		t.Run(c.err.Error(), func(t *testing.T) {
			e := error(c.err)
			dev.fail.Store(&e)
			defer dev.fail.Store(nil)
			_, err := f.WriteAt(make([]byte, 4096), 0)
			must.ErrorIs(t, err, c.want)
			must.ErrorIs(t, f.Sync(), c.want)
		})
	}
}

func TestFUSEUnmountRefusedWhileOpen(t *testing.T) {
	m, _, _ := mountTestFUSE(t, 4<<20, 0)
	f, err := os.Open(m.Path())
	must.NoError(t, err)
	err = m.Unmount()
	must.ErrorIs(t, err, ErrFUSEBusy)
	must.NoError(t, f.Close())
	must.NoError(t, m.Unmount())
	<-m.Done()
	must.False(t, isMountPoint(t, m.Dir()))
}

// TestFUSEWatchdogAbortsHungServer: writes stuck in the Device with none
// completing make the watchdog abort the connection, so the writer gets an
// error instead of blocking forever.
func TestFUSEWatchdogAbortsHungServer(t *testing.T) {
	m, dev, _ := mountTestFUSE(t, 4<<20, 400*time.Millisecond)
	release := make(chan struct{})
	dev.block.Store(&release)
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)

	f, err := os.OpenFile(m.Path(), os.O_RDWR, 0)
	must.NoError(t, err)
	defer f.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := f.WriteAt(make([]byte, 4096), 0)
		errc <- err
	}()
	select {
	case err := <-errc:
		must.Error(t, err)
		must.True(t, errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.EIO), must.Sprint(err))
	case <-time.After(10 * time.Second):
		t.Fatal("write still blocked 10s after a 400ms watchdog timeout")
	}
	must.True(t, m.Aborted())
	unblock() // let the stuck handler return so the server loop can end
	must.NoError(t, m.Close())
}

func isMountPoint(t *testing.T, dir string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	must.NoError(t, err)
	return bytes.Contains(data, []byte(" "+dir+" "))
}

// alignedBuf returns n bytes aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := 4096 - int(uintptr(unsafe.Pointer(&b[0]))&4095)
	return b[off : off+n]
}
