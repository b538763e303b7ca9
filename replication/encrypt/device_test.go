package encrypt

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/rand"
	"errors"
	mrand "math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/shoenig/test/must"
	"golang.org/x/crypto/xts"
	"pgregory.net/rapid"

	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/internal/replicatest"
)

// recDevice is a Device in memory, recording the requests it is sent.
type recDevice struct {
	mu     sync.Mutex
	data   []byte
	trims  [][2]int64
	writes [][2]int64
}

func newRecDevice(size int) *recDevice { return &recDevice{data: make([]byte, size)} }

func (m *recDevice) Size() int64 { return int64(len(m.data)) }

func (m *recDevice) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > int64(len(m.data)) {
		return replication.ErrOutOfRange
	}
	return nil
}

func (m *recDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.data[off:])
	return nil
}

func (m *recDevice) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	m.writes = append(m.writes, [2]int64{off, int64(len(p))})
	return nil
}

func (m *recDevice) Flush(context.Context) error { return nil }

func (m *recDevice) Trim(_ context.Context, off, n int64) error {
	if err := m.check(off, n); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	m.trims = append(m.trims, [2]int64{off, n})
	return nil
}

func testKey(t testing.TB) []byte {
	k := make([]byte, KeySize)
	_, err := rand.Read(k)
	must.NoError(t, err)
	return k
}

func TestEncryptedDeviceRefusesBadConfig(t *testing.T) {
	t.Parallel()
	_, err := NewDevice(newRecDevice(8192), make([]byte, 32))
	must.ErrorIs(t, err, replication.ErrInvalid)
	_, err = NewDevice(newRecDevice(8192+512), testKey(t))
	must.ErrorIs(t, err, replication.ErrInvalid)
}

func TestEncryptedDeviceRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	mem := newRecDevice(64 << 10)
	d, err := NewDevice(mem, testKey(t))
	must.NoError(t, err)

	// Never written: zeros.
	got := make([]byte, 10000)
	must.NoError(t, d.ReadAt(ctx, got, 123))
	must.Eq(t, make([]byte, 10000), got)

	plain := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog. "), 400)[:16384]
	must.NoError(t, d.WriteAt(ctx, plain, 4096, false))
	got = make([]byte, len(plain))
	must.NoError(t, d.ReadAt(ctx, got, 4096))
	must.Eq(t, plain, got)
	// What lies below is not the plaintext, nor any 16 bytes of it.
	must.False(t, bytes.Contains(mem.data, plain[:16]))
	must.False(t, bytes.Contains(mem.data, []byte("quick brown")))
	// Equal plaintext blocks at different places encrypt differently.
	same := bytes.Repeat([]byte{0xAB}, 2*blockSize)
	must.NoError(t, d.WriteAt(ctx, same, 8*blockSize, false))
	must.NotEq(t, mem.data[8*blockSize:9*blockSize], mem.data[9*blockSize:10*blockSize])

	// Out of range is refused, nothing written.
	err = d.WriteAt(ctx, []byte{1}, 64<<10, false)
	must.ErrorIs(t, err, replication.ErrOutOfRange)
	err = d.ReadAt(ctx, make([]byte, 2), 64<<10-1)
	must.ErrorIs(t, err, replication.ErrOutOfRange)
	err = d.Trim(ctx, -1, 10)
	must.ErrorIs(t, err, replication.ErrOutOfRange)

	// Another key reads garbage, not the plaintext.
	other, err := NewDevice(mem, testKey(t))
	must.NoError(t, err)
	must.NoError(t, other.ReadAt(ctx, got, 4096))
	must.NotEq(t, plain, got)
}

func TestEncryptedDeviceUnaligned(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const size = 16 << 10
	mem := newRecDevice(size)
	d, err := NewDevice(mem, testKey(t))
	must.NoError(t, err)
	model := make([]byte, size)
	r := mrand.New(mrand.NewPCG(1, 2))
	for i := 0; i < 150; i++ {
		off := r.IntN(size - 1)
		n := 1 + r.IntN(min(size-off, 3*blockSize))
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		must.NoError(t, d.WriteAt(ctx, p, int64(off), false))
		copy(model[off:], p)
		// Below, only whole blocks are written.
		last := mem.writes[len(mem.writes)-1]
		must.Eq(t, int64(0), last[0]%blockSize)
		must.Eq(t, int64(0), last[1]%blockSize)
		ro := r.IntN(size - 1)
		rn := 1 + r.IntN(size-ro)
		got := make([]byte, rn)
		must.NoError(t, d.ReadAt(ctx, got, int64(ro)))
		must.Eq(t, model[ro:ro+rn], got)
	}
}

func TestEncryptedDeviceTrimReadsZeros(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const size = 16 * blockSize
	mem := newRecDevice(size)
	d, err := NewDevice(mem, testKey(t))
	must.NoError(t, err)
	full := bytes.Repeat([]byte{0x5A}, size)
	must.NoError(t, d.WriteAt(ctx, full, 0, false))

	// From the middle of block 1 to the middle of block 5: blocks 2-4 are
	// trimmed below, the parts of 1 and 5 rewritten as encrypted zeros.
	off, n := int64(blockSize+100), int64(4*blockSize)
	must.NoError(t, d.Trim(ctx, off, n))
	must.Eq(t, [][2]int64{{2 * blockSize, 3 * blockSize}}, mem.trims)
	got := make([]byte, size)
	must.NoError(t, d.ReadAt(ctx, got, 0))
	want := bytes.Clone(full)
	clear(want[off : off+n])
	must.Eq(t, want, got)
	// The parts of blocks are not zeros below: they are ciphertext.
	must.NotEq(t, make([]byte, blockSize), mem.data[blockSize:2*blockSize])

	// A trim inside one block trims nothing below.
	must.NoError(t, d.Trim(ctx, 8*blockSize+10, 20))
	must.Len(t, 1, mem.trims)
	clear(want[8*blockSize+10 : 8*blockSize+30])
	// An aligned trim is a trim, nothing else.
	writes := len(mem.writes)
	must.NoError(t, d.Trim(ctx, 12*blockSize, 4*blockSize))
	must.Eq(t, writes, len(mem.writes))
	clear(want[12*blockSize:])
	must.NoError(t, d.ReadAt(ctx, got, 0))
	must.Eq(t, want, got)
}

// rapid: any sequence of writes, trims and reads of any alignment reads
// back like a plain byte array.
func TestEncryptedDeviceModel(t *testing.T) {
	t.Parallel()
	key := testKey(t)
	rapid.Check(t, func(rt *rapid.T) {
		ctx := context.Background()
		nblocks := rapid.IntRange(1, 8).Draw(rt, "blocks")
		size := nblocks * blockSize
		mem := newRecDevice(size)
		d, err := NewDevice(mem, key)
		if err != nil {
			rt.Fatal(err)
		}
		model := make([]byte, size)
		for i, steps := 0, rapid.IntRange(1, 30).Draw(rt, "steps"); i < steps; i++ {
			off := rapid.IntRange(0, size-1).Draw(rt, "off")
			n := rapid.IntRange(0, size-off).Draw(rt, "n")
			switch rapid.IntRange(0, 2).Draw(rt, "op") {
			case 0:
				p := make([]byte, n)
				fill := byte(rapid.IntRange(0, 255).Draw(rt, "fill"))
				for j := range p {
					p[j] = fill + byte(j)
				}
				if err := d.WriteAt(ctx, p, int64(off), false); err != nil {
					rt.Fatal(err)
				}
				copy(model[off:], p)
			case 1:
				if err := d.Trim(ctx, int64(off), int64(n)); err != nil {
					rt.Fatal(err)
				}
				clear(model[off : off+n])
			case 2:
				got := make([]byte, n)
				if err := d.ReadAt(ctx, got, int64(off)); err != nil {
					rt.Fatal(err)
				}
				if !bytes.Equal(model[off:off+n], got) {
					rt.Fatalf("read [%d, %d) differs from the model", off, off+n)
				}
			}
		}
		got := make([]byte, size)
		if err := d.ReadAt(ctx, got, 0); err != nil {
			rt.Fatal(err)
		}
		if !bytes.Equal(model, got) {
			rt.Fatal("device differs from the model")
		}
	})
}

// Concurrent small writes into the same blocks (as NBD clients send):
// none is lost to another's read-modify-write.
func TestEncryptedDeviceConcurrentPartialWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const size = 4 * blockSize
	d, err := NewDevice(newRecDevice(size), testKey(t))
	must.NoError(t, err)
	var wg sync.WaitGroup
	const pieces = size / 512
	for g := 0; g < 8; g++ {
		wg.Go(func() {
			for i := g; i < pieces; i += 8 {
				p := bytes.Repeat([]byte{byte(i + 1)}, 512)
				must.NoError(t, d.WriteAt(ctx, p, int64(i*512), false))
				from := max(0, i*512-100)
				got := make([]byte, min(700, size-from))
				must.NoError(t, d.ReadAt(ctx, got, int64(from)))
			}
		})
	}
	wg.Wait()
	got := make([]byte, size)
	must.NoError(t, d.ReadAt(ctx, got, 0))
	for i := 0; i < pieces; i++ {
		must.Eq(t, bytes.Repeat([]byte{byte(i + 1)}, 512), got[i*512:(i+1)*512], must.Sprintf("piece %d lost", i))
	}
}

// A request waiting for a held block gives up when its context ends.
func TestEncryptedDeviceLockWaitCancelled(t *testing.T) {
	t.Parallel()
	var l blockLocks
	unlock, err := l.lock(context.Background(), 3, 5, true)
	must.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = l.lock(ctx, 5, 9, false)
	must.True(t, errors.Is(err, context.DeadlineExceeded))
	// Shared locks of disjoint or shared ranges do not wait.
	u2, err := l.lock(context.Background(), 6, 9, false)
	must.NoError(t, err)
	u3, err := l.lock(context.Background(), 7, 8, false)
	must.NoError(t, err)
	unlock()
	u2()
	u3()
	must.Len(t, 0, l.queue)
}

// Through a real engine and three replica servers: the replicas' data
// files hold none of the plaintext, and a new engine over the same
// replicas (a failover) reads it back with the key.
func TestEncryptedEngineReplicasHoldNoPlaintext(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	rs := []*replicatest.Replica{replicatest.StartReplica(t, dirs[0]), replicatest.StartReplica(t, dirs[1]), replicatest.StartReplica(t, dirs[2])}
	const size = 4 << 20
	ctx := context.Background()
	key := testKey(t)
	e := replicatest.StartEngine(t, "encvol", size, 1, rs...)
	d, err := NewDevice(e, key)
	must.NoError(t, err)
	marker := []byte("SADDLEBAG-PLAINTEXT-MARKER-0123456789")
	plain := bytes.Repeat(marker, 256<<10/len(marker))
	must.NoError(t, d.WriteAt(ctx, plain, 513, false))  // unaligned
	must.NoError(t, d.WriteAt(ctx, plain, 2<<20, true)) // aligned, FUA
	must.NoError(t, d.Trim(ctx, 2<<20+blockSize, 8*blockSize))
	must.NoError(t, d.Flush(ctx))
	must.NoError(t, e.Shutdown(ctx))

	for i, r := range rs {
		data, err := os.ReadFile(r.Store.DataPath("encvol"))
		must.NoError(t, err)
		must.Greater(t, 2<<20, len(bytes.TrimRight(data, "\x00")), must.Sprintf("replica %d holds no data at all", i))
		must.False(t, bytes.Contains(data, marker[:16]), must.Sprintf("replica %d holds plaintext", i))
	}

	e2 := replicatest.StartEngine(t, "encvol", size, 2, rs...)
	d2, err := NewDevice(e2, key)
	must.NoError(t, err)
	got := make([]byte, len(plain))
	must.NoError(t, d2.ReadAt(ctx, got, 513))
	must.Eq(t, plain, got)
	must.NoError(t, d2.ReadAt(ctx, got, 2<<20))
	want := bytes.Clone(plain)
	clear(want[blockSize : 9*blockSize])
	must.Eq(t, want, got)
}

// xtsCipher is AES-256-XTS exactly as golang.org/x/crypto/xts computes it
// (and so as dm-crypt's aes-xts-plain64 with 4096-byte sectors stores
// it): same ciphertext for random keys, sectors and data, including
// sector numbers whose tweak doubling carries, and it decrypts back.
func TestXTSMatchesXCrypto(t *testing.T) {
	t.Parallel()
	r := mrand.New(mrand.NewPCG(7, 11))
	for i := 0; i < 60; i++ {
		key := make([]byte, KeySize)
		for j := range key {
			key[j] = byte(r.Uint32())
		}
		ref, err := xts.NewCipher(aes.NewCipher, key)
		must.NoError(t, err)
		mine, err := newXTS(key)
		must.NoError(t, err)
		sector := r.Uint64()
		if i%4 == 0 {
			sector = uint64(i)
		}
		plain := make([]byte, blockSize)
		for j := range plain {
			plain[j] = byte(r.Uint32())
		}
		want := make([]byte, blockSize)
		ref.Encrypt(want, plain, sector)
		got := bytes.Clone(plain)
		mine.encryptSector(got, sector)
		must.Eq(t, want, got, must.Sprintf("key %d sector %d", i, sector))
		mine.decryptSector(got, sector)
		must.Eq(t, plain, got)
	}
}
