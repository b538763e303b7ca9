package fuse

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

	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/internal/replicatest"
)

// countingDevice wraps a Device and counts the calls that reached it.
type countingDevice struct {
	replication.Device
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
func mountTestFUSE(t *testing.T, size int64, hung time.Duration) (*Mount, *countingDevice, []*replicatest.Replica) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("FUSE tests mount file systems and must run as root")
	}
	var reps []*replicatest.Replica
	for i := 0; i < 3; i++ {
		reps = append(reps, replicatest.StartReplica(t, t.TempDir()))
	}
	eng := replicatest.StartEngine(t, "vol", size, 1, reps...)
	dev := &countingDevice{Device: eng}
	m, err := New(context.Background(), dev, Config{Dir: t.TempDir(), Name: "vol", HungTimeout: hung, Log: replicatest.Logger(t)})
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
		data, err := os.ReadFile(r.Store.DataPath("vol"))
		must.NoError(t, err)
		must.True(t, bytes.Equal(buf, data[3<<20:4<<20]), must.Sprint("replica ", r.Addr))
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
		{replication.ErrFenced, unix.EIO},
		{replication.ErrNoSpace, unix.ENOSPC},
		{replication.ErrNoReplicas, unix.EIO},
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
	must.ErrorIs(t, err, ErrBusy)
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

// mountDeviceFUSE serves dev itself (not a wrapper, so that whatever
// optional interfaces it implements reach the mount) through FUSE with the
// given watchdog timeout.
func mountDeviceFUSE(t *testing.T, dev replication.Device, hung time.Duration) *Mount {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("FUSE tests mount file systems and must run as root")
	}
	m, err := New(context.Background(), dev, Config{Dir: t.TempDir(), Name: "vol", HungTimeout: hung, Log: replicatest.Logger(t)})
	must.NoError(t, err)
	t.Cleanup(func() { must.NoError(t, m.Close()) })
	return m
}

// writeInBackground writes data at off through a file of its own and
// reports the outcome on the returned channel.
func writeInBackground(t *testing.T, path string, data []byte, off int64) <-chan error {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	must.NoError(t, err)
	errc := make(chan error, 1)
	go func() {
		_, err := f.WriteAt(data, off)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		errc <- err
	}()
	return errc
}

// TestFUSEWatchdogSparesHeldEngine (issue #10, scenario 8): a write the
// engine deliberately holds (primary lease unconfirmed) for many watchdog
// timeouts leaves the mount alive, and completes once the hold is lifted.
func TestFUSEWatchdogSparesHeldEngine(t *testing.T) {
	const hung = 400 * time.Millisecond
	reps := []*replicatest.Replica{replicatest.StartReplica(t, t.TempDir()), replicatest.StartReplica(t, t.TempDir())}
	eng := replicatest.StartEngine(t, "vol", 4<<20, 1, reps...)
	m := mountDeviceFUSE(t, eng, hung)
	t.Cleanup(eng.Release) // a failed test must not leave the mount's requests held

	eng.Hold()
	data := alignedBuf(64 << 10)
	for i := range data {
		data[i] = byte(i*7 + 3)
	}
	errc := writeInBackground(t, m.Path(), data, 1<<20)
	select {
	case err := <-errc:
		t.Fatalf("held write returned before the hold was lifted: %v", err)
	case <-time.After(5 * hung):
	}
	must.False(t, m.Aborted(), must.Sprint("watchdog aborted a mount whose engine was deliberately holding"))

	eng.Release()
	select {
	case err := <-errc:
		must.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("held write still blocked 10s after Release")
	}
	must.False(t, m.Aborted())
	for _, r := range reps {
		got, err := os.ReadFile(r.Store.DataPath("vol"))
		must.NoError(t, err)
		must.True(t, bytes.Equal(data, got[1<<20:1<<20+len(data)]), must.Sprint("replica ", r.Addr))
	}
}

// TestFUSEWatchdogSparesMinInSyncWait: a write waiting for min_in_sync
// replicas for longer than the watchdog timeout keeps the mount alive and
// completes once resync brings a replica back.
func TestFUSEWatchdogSparesMinInSyncWait(t *testing.T) {
	const hung = 400 * time.Millisecond
	dirs := []string{t.TempDir(), t.TempDir()}
	reps := []*replicatest.Replica{replicatest.StartReplica(t, dirs[0]), replicatest.StartReplica(t, dirs[1])}
	cfg := replicatest.EngineConfig(t, "vol", 4<<20, 1, reps...)
	cfg.MinInSync = 2
	eng, err := replication.StartEngine(context.Background(), cfg)
	must.NoError(t, err)
	t.Cleanup(eng.Close)
	m := mountDeviceFUSE(t, eng, hung)

	reps[1].Stop()
	data := alignedBuf(4096)
	copy(data, "written while below min_in_sync")
	errc := writeInBackground(t, m.Path(), data, 8192)
	select {
	case err := <-errc:
		t.Fatalf("write completed with one replica in sync and min_in_sync=2: %v", err)
	case <-time.After(5 * hung):
	}
	must.False(t, m.Aborted(), must.Sprint("watchdog aborted a mount whose engine waits for min_in_sync"))

	reps[1] = replicatest.StartReplicaAt(t, dirs[1], reps[1].Addr)
	select {
	case err := <-errc:
		must.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("write still blocked 30s after the replica came back")
	}
	must.False(t, m.Aborted())
	got, err := os.ReadFile(reps[1].Store.DataPath("vol"))
	must.NoError(t, err)
	must.True(t, bytes.Equal(data, got[8192:8192+4096]))
}

// flickerDevice is hung (writes block until block is closed) yet reports a
// deliberate hold on every other call of Holding.
type flickerDevice struct {
	*countingDevice
	calls atomic.Int64
}

func (d *flickerDevice) Holding() (bool, string) {
	return d.calls.Add(1)%2 == 0, "flickering hold"
}

// TestFUSEWatchdogAbortsHungServerFlickeringHold: a hung Device whose hold
// comes and goes is still aborted: ticks it holds on pause the watchdog's
// count of stalled ticks, they do not reset it.
func TestFUSEWatchdogAbortsHungServerFlickeringHold(t *testing.T) {
	const hung = 400 * time.Millisecond
	eng := replicatest.StartEngine(t, "vol", 4<<20, 1, replicatest.StartReplica(t, t.TempDir()))
	dev := &flickerDevice{countingDevice: &countingDevice{Device: eng}}
	release := make(chan struct{})
	dev.block.Store(&release)
	m := mountDeviceFUSE(t, dev, hung)
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the mount's Close, which waits for the handler

	errc := writeInBackground(t, m.Path(), alignedBuf(4096), 0)
	select {
	case err := <-errc:
		must.True(t, errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.EIO), must.Sprint(err))
	case <-time.After(10 * time.Second):
		t.Fatal("write to a hung device with a flickering hold still blocked 10s after a 400ms watchdog timeout")
	}
	must.True(t, m.Aborted())
	must.Greater(t, 2, dev.calls.Load(), must.Sprint("the watchdog asked the device whether it holds"))
	unblock()
}

// TestFUSECloseAbortedMountWithHeldRequest: Close of a mount whose
// connection was aborted while the engine still holds a request returns
// instead of waiting for the hold to end.
func TestFUSECloseAbortedMountWithHeldRequest(t *testing.T) {
	eng := replicatest.StartEngine(t, "vol", 4<<20, 1, replicatest.StartReplica(t, t.TempDir()))
	t.Cleanup(eng.Release)
	m, err := New(context.Background(), eng, Config{Dir: t.TempDir(), Name: "vol", HungTimeout: -1, Log: replicatest.Logger(t)})
	must.NoError(t, err)
	eng.Hold()
	errc := writeInBackground(t, m.Path(), alignedBuf(4096), 0)
	waitFor(t, func() bool { return m.fs.inflight.Load() == 1 }, "the write to reach the engine")
	must.NoError(t, m.Abort())
	select {
	case err := <-errc:
		must.Error(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("write still blocked 10s after Abort")
	}
	closed := make(chan error, 1)
	go func() { closed <- m.Close() }()
	select {
	case err := <-closed:
		must.NoError(t, err)
	case <-time.After(10 * time.Second):
		eng.Release() // let Close finish so the test can end
		<-closed
		t.Fatal("Close of an aborted mount waited for the engine's hold to end")
	}
	must.False(t, isMountPoint(t, m.Dir()))
}

// waitFor polls cond for up to 10s.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStallTracker(t *testing.T) {
	held, notHeld := func() (bool, string) { return true, "why" }, func() (bool, string) { return false, "" }
	s := stallTracker{limit: 3}
	tick := func(waiting int64, done uint64, h func() (bool, string)) stallVerdict {
		v, _ := s.tick(waiting, done, h)
		return v
	}
	// Idle or progressing: never hung, hold never asked.
	panics := func() (bool, string) { panic("Holding asked while requests progress") }
	for i := range 10 {
		must.Eq(t, stallNone, tick(0, 0, panics))
		must.Eq(t, stallNone, tick(1, uint64(i+1), panics))
	}
	// Stalled without a hold: hung on the limit-th tick.
	must.Eq(t, stallNone, tick(1, 10, notHeld))
	must.Eq(t, stallNone, tick(1, 10, notHeld))
	must.Eq(t, stallHung, tick(1, 10, notHeld))

	// A hold of any length: reported once, never hung; progress ends it.
	s = stallTracker{limit: 3}
	v, why := s.tick(1, 0, held)
	must.Eq(t, stallHeld, v)
	must.Eq(t, "why", why)
	for range 100 {
		must.Eq(t, stallNone, tick(1, 0, held))
	}
	must.Eq(t, stallResumed, tick(1, 1, panics))
	must.Eq(t, stallNone, tick(1, 2, panics))

	// A flickering hold pauses the count without resetting it, and is
	// reported once per stall.
	s = stallTracker{limit: 3}
	must.Eq(t, stallNone, tick(1, 0, notHeld))
	must.Eq(t, stallHeld, tick(1, 0, held))
	must.Eq(t, stallNone, tick(1, 0, notHeld))
	must.Eq(t, stallNone, tick(1, 0, held))
	must.Eq(t, stallHung, tick(1, 0, notHeld))

	// Progress resets the count.
	s = stallTracker{limit: 3}
	must.Eq(t, stallNone, tick(1, 0, notHeld))
	must.Eq(t, stallNone, tick(1, 0, notHeld))
	must.Eq(t, stallNone, tick(1, 1, panics))
	must.Eq(t, stallNone, tick(1, 1, notHeld))
	must.Eq(t, stallNone, tick(1, 1, notHeld))
	must.Eq(t, stallHung, tick(1, 1, notHeld))
}
