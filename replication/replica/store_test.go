package replica

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/wire"
)

func TestStoreCreateOpenRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, testLogger(t))
	must.NoError(t, err)

	_, _, err = s.Open("vol1", 1<<20, false)
	must.ErrorIs(t, err, wire.ErrVolumeNotFound)

	v, created, err := s.Open("vol1", 1<<20, true)
	must.NoError(t, err)
	must.True(t, created)
	must.NoError(t, v.WriteAt(3, []byte("hello"), 4096, true))
	must.NoError(t, v.Close())

	// The data file is sparse: 1 MiB apparent size, little allocated.
	fi, err := os.Stat(s.DataPath("vol1"))
	must.NoError(t, err)
	must.Eq(t, int64(1<<20), fi.Size())

	v, created, err = s.Open("vol1", 1<<20, true)
	must.NoError(t, err)
	must.False(t, created)
	must.True(t, v.WasClean())
	m := v.Meta()
	must.Eq(t, uint64(3), m.Epoch)
	must.Eq(t, uint64(3), m.Generation)
	must.False(t, m.Clean) // open: cleared until the clean close
	buf := make([]byte, 5)
	must.NoError(t, v.ReadAt(3, buf, 4096))
	must.Eq(t, "hello", string(buf))
	must.NoError(t, v.Close())
}

func TestStoreRefusesBadSizesAndIDs(t *testing.T) {
	s, err := OpenStore(t.TempDir(), testLogger(t))
	must.NoError(t, err)
	for _, size := range []int64{0, -4096, 4095, 4097, 1<<20 + 512} {
		_, _, err := s.Open("v", size, true)
		must.ErrorIs(t, err, wire.ErrInvalid)
		must.StrContains(t, err.Error(), "multiple of 4096")
	}
	for _, id := range []string{"", "..", "a/b", ".hidden", string(make([]byte, 200))} {
		_, _, err := s.Open(id, 4096, true)
		must.ErrorIs(t, err, wire.ErrInvalid)
	}
	v, _, err := s.Open("v", 8192, true)
	must.NoError(t, err)
	must.NoError(t, v.Close())
	_, _, err = s.Open("v", 4096, true)
	must.ErrorIs(t, err, wire.ErrInvalid)
	must.StrContains(t, err.Error(), "size")
}

func TestStoreFencesStaleEpochs(t *testing.T) {
	s, err := OpenStore(t.TempDir(), testLogger(t))
	must.NoError(t, err)
	v, _, err := s.Open("v", 8192, true)
	must.NoError(t, err)
	defer v.Close()
	must.NoError(t, v.Promise(5))
	must.ErrorIs(t, v.Promise(4), wire.ErrStaleEpoch)
	must.ErrorIs(t, v.WriteAt(4, []byte{1}, 0, false), wire.ErrStaleEpoch)
	must.ErrorIs(t, v.ReadAt(4, make([]byte, 1), 0), wire.ErrStaleEpoch)
	must.ErrorIs(t, v.Flush(4), wire.ErrStaleEpoch)
	must.ErrorIs(t, v.Trim(4, 0, 4096), wire.ErrStaleEpoch)
	// A higher epoch in a frame is an implicit promise.
	must.NoError(t, v.WriteAt(6, []byte{1}, 0, false))
	must.ErrorIs(t, v.WriteAt(5, []byte{1}, 0, false), wire.ErrStaleEpoch)
	must.Eq(t, uint64(6), v.Meta().Epoch)
	// Out of range is refused before anything is written.
	must.ErrorIs(t, v.WriteAt(6, make([]byte, 2), 8191, false), wire.ErrOutOfRange)
	must.ErrorIs(t, v.Trim(6, 4096, 8192), wire.ErrOutOfRange)
}

func TestStorePromiseSurvivesReopen(t *testing.T) {
	s, err := OpenStore(t.TempDir(), testLogger(t))
	must.NoError(t, err)
	v, _, err := s.Open("v", 8192, true)
	must.NoError(t, err)
	must.NoError(t, v.Promise(9))
	// Simulate a crash: drop the files without the clean close.
	v.data.Close()
	v.meta.close()
	s.mu.Lock()
	delete(s.open, "v")
	s.mu.Unlock()

	v, _, err = s.Open("v", 8192, false)
	must.NoError(t, err)
	defer v.Close()
	must.False(t, v.WasClean())
	must.ErrorIs(t, v.WriteAt(8, []byte{1}, 0, false), wire.ErrStaleEpoch)
}

func TestMetaTornWriteKeepsPreviousVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta")
	mf, err := createMeta(OSFS{}, path, Meta{VolumeID: "v", Size: 4096, Epoch: 1})
	must.NoError(t, err)
	must.NoError(t, mf.store(Meta{VolumeID: "v", Size: 4096, Epoch: 2}))
	newest := int64(mf.sf.seq%2) * metaSlotSize
	mf.close()

	// Tear the newest slot: its second half never reached the disk.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must.NoError(t, err)
	_, err = f.WriteAt(bytes.Repeat([]byte{0xAB}, 20), newest+30)
	must.NoError(t, err)
	f.Close()

	mf, err = openMeta(OSFS{}, path)
	must.NoError(t, err)
	must.Eq(t, uint64(1), mf.cur.Epoch)
	// The next store goes to the torn slot and wins again.
	must.NoError(t, mf.store(Meta{VolumeID: "v", Size: 4096, Epoch: 3}))
	mf.close()
	mf, err = openMeta(OSFS{}, path)
	must.NoError(t, err)
	must.Eq(t, uint64(3), mf.cur.Epoch)
	mf.close()

	// Both slots torn: a clear error, not garbage.
	must.NoError(t, os.WriteFile(path, bytes.Repeat([]byte{1}, 2*metaSlotSize), 0o600))
	_, err = openMeta(OSFS{}, path)
	must.True(t, errors.Is(err, ErrMetaCorrupt))
}

func TestTrimPunchesHoles(t *testing.T) {
	s, err := OpenStore(t.TempDir(), testLogger(t))
	must.NoError(t, err)
	v, _, err := s.Open("v", 1<<20, true)
	must.NoError(t, err)
	defer v.Close()
	must.NoError(t, v.WriteAt(1, bytes.Repeat([]byte{7}, 1<<20), 0, true))
	must.NoError(t, v.Trim(1, 64<<10, 128<<10))
	buf := make([]byte, 1<<20)
	must.NoError(t, v.ReadAt(1, buf, 0))
	must.Eq(t, bytes.Repeat([]byte{7}, 64<<10), buf[:64<<10])
	must.Eq(t, make([]byte, 128<<10), buf[64<<10:192<<10])
	must.Eq(t, byte(7), buf[192<<10])
}

// A crash between a replica's creation and its metadata's first fsync
// leaves a metadata file that never held anything (zeros, or not even
// sized): the replica is absent, and the next create makes it again,
// instead of a replica that reports corrupt metadata forever.
func TestInterruptedCreateIsAbsent(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, testLogger(t))
	must.NoError(t, err)
	for _, content := range [][]byte{nil, make([]byte, 2*metaSlotSize), append(make([]byte, metaSlotSize), []byte(slotMagic+"torn")...)} {
		must.NoError(t, os.RemoveAll(filepath.Join(dir, "v")))
		must.NoError(t, os.MkdirAll(filepath.Join(dir, "v"), 0o700))
		must.NoError(t, os.WriteFile(s.DataPath("v"), nil, 0o600))
		must.NoError(t, os.WriteFile(s.metaPath("v"), content, 0o600))
		_, _, err := s.Open("v", 1<<20, false)
		must.ErrorIs(t, err, wire.ErrVolumeNotFound)
		v, created, err := s.Open("v", 1<<20, true)
		must.NoError(t, err)
		must.True(t, created)
		must.NoError(t, v.Close())
		v, created, err = s.Open("v", 1<<20, false)
		must.NoError(t, err)
		must.False(t, created)
		must.NoError(t, v.Close())
	}
	// A metadata file whose slot 0 was written once is not unborn: with
	// no valid slot it is corrupt, and nothing recreates it.
	bad := make([]byte, 2*metaSlotSize)
	copy(bad, slotMagic+"garbage")
	must.NoError(t, os.WriteFile(s.metaPath("v"), bad, 0o600))
	_, _, err = s.Open("v", 1<<20, true)
	must.ErrorIs(t, err, ErrMetaCorrupt)
}

// The resync-target generation is stored durably, only grows, and only
// from the promised epoch on (Meta.TargetGen).
func TestTargetGenPersistsAndOnlyGrows(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, testLogger(t))
	must.NoError(t, err)
	v, _, err := s.Open("vol", 1<<20, true)
	must.NoError(t, err)
	must.NoError(t, v.SetTargetGen(2, epochGenBase(2)+1))
	must.NoError(t, v.SetTargetGen(2, epochGenBase(2)+1)) // again: nothing to do
	must.ErrorIs(t, v.SetTargetGen(2, epochGenBase(2)), wire.ErrInvalid)
	must.ErrorIs(t, v.SetTargetGen(1, epochGenBase(2)+5), wire.ErrStaleEpoch)
	must.NoError(t, v.Close())

	s, err = OpenStore(dir, testLogger(t))
	must.NoError(t, err)
	v, _, err = s.Open("vol", 1<<20, false)
	must.NoError(t, err)
	defer v.Close()
	must.Eq(t, epochGenBase(2)+1, v.Meta().TargetGen)
	must.Eq(t, epochGenBase(2)+1, stateReply(v, false).TargetGen)
}

// A replica that crashed reports itself unclean (it may have lost writes
// it had not flushed) to the first connection that opens it. A connection
// that never gets to use it (a fenced primary, refused at its promise; an
// operator's tool) must not clear that when it closes: the primary that
// needs to know would then be told the replica was shut down cleanly
// (seed 408810906: a block lost at a power cut kept on an in-sync replica).
func TestUncleanReplicaStaysUncleanUntilAPrimaryUsedIt(t *testing.T) {
	dir := t.TempDir()
	const size = 1 << 20
	s1, err := OpenStore(dir, testLogger(t))
	must.NoError(t, err)
	_, _, err = s1.Open("vol", size, true)
	must.NoError(t, err) // never closed: the process crashes

	s2, err := OpenStore(dir, testLogger(t))
	must.NoError(t, err)
	v, _, err := s2.Open("vol", size, false)
	must.NoError(t, err)
	must.False(t, v.WasClean())
	must.NoError(t, v.Close()) // a connection that only looked

	v, _, err = s2.Open("vol", size, false)
	must.NoError(t, err)
	must.False(t, v.WasClean(), must.Sprint("the crash was forgotten by a connection that did not use the replica"))
	sess, err := v.PromiseSession(1, 7)
	must.NoError(t, err)
	done, err := v.enter(sess, 1) // a request after the promise: its primary read the state
	must.NoError(t, err)
	done()
	must.NoError(t, v.Close())

	v, _, err = s2.Open("vol", size, false)
	must.NoError(t, err)
	must.True(t, v.WasClean())
	must.NoError(t, v.Close())
}
