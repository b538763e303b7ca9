package crashfs

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/replica"
)

func fill(v byte) []byte { return bytes.Repeat([]byte{v}, blockSize) }

func TestCrashFSPowerLossKeepsSyncedAndSomeUnsynced(t *testing.T) {
	sawLost, sawKept := false, false
	for seed := uint64(0); seed < 32; seed++ {
		c := New()
		f, err := c.OpenFile("/d/data", os.O_RDWR|os.O_CREATE, 0)
		must.NoError(t, err)
		must.NoError(t, f.Truncate(4*blockSize))
		for b := int64(0); b < 4; b++ {
			_, err := f.WriteAt(fill(1), b*blockSize)
			must.NoError(t, err)
		}
		must.NoError(t, f.Datasync())
		// Unsynced: block 0 twice, block 1 punched, block 2 once.
		_, err = f.WriteAt(fill(2), 0)
		must.NoError(t, err)
		_, err = f.WriteAt(fill(3), 0)
		must.NoError(t, err)
		must.NoError(t, f.PunchHole(blockSize, blockSize))
		_, err = f.WriteAt(fill(4), 2*blockSize)
		must.NoError(t, err)

		c.PowerLoss(rand.New(rand.NewPCG(seed, 0)))
		_, err = f.ReadAt(make([]byte, 1), 0)
		must.ErrorIs(t, err, ErrKilled) // the old process's handle is dead
		got, err := c.ReadFile("/d/data")
		must.NoError(t, err)
		must.Len(t, 4*blockSize, got)
		allowed := [][]byte{{1, 2, 3}, {1, 0}, {1, 4}, {1}}
		for b, vals := range allowed {
			v := got[b*blockSize]
			must.SliceContains(t, vals, v, must.Sprintf("seed %d block %d", seed, b))
			must.Eq(t, fill(v), got[b*blockSize:(b+1)*blockSize])
			if v == 1 && b < 3 {
				sawLost = true
			} else if b < 3 {
				sawKept = true
			}
		}
	}
	must.True(t, sawLost)
	must.True(t, sawKept)
}

func TestCrashFSQuotaAndHoles(t *testing.T) {
	c := New()
	f, err := c.OpenFile("/d/data", os.O_RDWR|os.O_CREATE, 0)
	must.NoError(t, err)
	must.NoError(t, f.Truncate(16*blockSize))
	c.SetQuota(2 * blockSize)
	_, err = f.WriteAt(make([]byte, 2*blockSize), 4*blockSize)
	must.NoError(t, err)
	_, err = f.WriteAt(fill(9), 8*blockSize)
	must.True(t, errors.Is(err, syscall.ENOSPC))
	// Overwriting allocated blocks needs no space.
	_, err = f.WriteAt(fill(7), 5*blockSize)
	must.NoError(t, err)
	d, err := f.SeekData(0)
	must.NoError(t, err)
	must.Eq(t, int64(4*blockSize), d)
	h, err := f.SeekHole(d)
	must.NoError(t, err)
	must.Eq(t, int64(6*blockSize), h)
	_, err = f.SeekData(h)
	must.True(t, errors.Is(err, syscall.ENXIO))
	must.NoError(t, f.PunchHole(4*blockSize, 2*blockSize))
	must.Eq(t, int64(0), c.Used())
}

func TestStoreOnCrashFSSurvivesPowerLoss(t *testing.T) {
	c := New()
	log := hclog.NewNullLogger()
	s, err := replica.OpenStoreWith("/n", log, replica.StoreOptions{Files: c})
	must.NoError(t, err)
	v, created, err := s.Open("vol", 1<<20, true)
	must.NoError(t, err)
	must.True(t, created)
	must.NoError(t, v.WriteAt(3, fill(5), 0, true))
	must.NoError(t, v.WriteAt(3, fill(6), blockSize, false))
	c.PowerLoss(rand.New(rand.NewPCG(1, 1)))

	s, err = replica.OpenStoreWith("/n", log, replica.StoreOptions{Files: c})
	must.NoError(t, err)
	v, created, err = s.Open("vol", 1<<20, false)
	must.NoError(t, err)
	must.False(t, created)
	must.False(t, v.WasClean())
	must.Eq(t, uint64(3), v.Meta().Epoch)
	must.Eq(t, uint64(3), v.Meta().Generation)
	buf := make([]byte, blockSize)
	must.NoError(t, v.ReadAt(3, buf, 0))
	must.Eq(t, fill(5), buf) // FUA: durable
	must.NoError(t, v.Close())
}

func TestCrashFSArmedPowerLossFiresOnTheNthMatchingWrite(t *testing.T) {
	c := New()
	data, err := c.OpenFile("/d/data", os.O_RDWR|os.O_CREATE, 0)
	must.NoError(t, err)
	meta, err := c.OpenFile("/d/meta", os.O_RDWR|os.O_CREATE, 0)
	must.NoError(t, err)
	fired := make(chan int, 1)
	c.ArmPowerLoss("meta", 2, rand.New(rand.NewPCG(1, 2)), nil, func(lost int) { fired <- lost })
	_, err = data.WriteAt(fill(1), 0) // not matching
	must.NoError(t, err)
	_, err = meta.WriteAt(fill(2), 0) // first match
	must.NoError(t, err)
	must.NoError(t, meta.Sync())
	_, err = meta.WriteAt(fill(3), 0) // second: the power goes
	must.ErrorIs(t, err, ErrKilled)
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("the trap did not fire")
	}
	_, err = data.WriteAt(fill(4), 0)
	must.ErrorIs(t, err, ErrKilled) // every handle of the process died
	got, err := c.ReadFile("/d/meta")
	must.NoError(t, err)
	must.SliceContains(t, []byte{2, 3}, got[0]) // synced version, or the unsynced one
}
