package sim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/saddlebag/saddlebag/replication"
)

// inSyncRecord is the coordinator's copy of leader.InSyncRecord.
type inSyncRecord struct {
	Epoch    uint64
	Gen      uint64
	Replicas []string
}

// coordinator stands in for Consul with the semantics of leader/lease.go
// and leader/insync.go: the primary lock's LockIndex is the epoch; the
// in-sync record is written only by the current lock holder, never over a
// record of a newer epoch. Its faults: the record lost, rolled back to an
// older version, the lock index reset, and a blip (writes fail for a
// while, as when the Consul leader changes).
type coordinator struct {
	mu        sync.Mutex
	lockIndex uint64
	floor     uint64 // the epoch floor (leader's <vol>/epoch-floor): epoch = floor + lockIndex
	holder    uint64 // session (not epoch: a reset can repeat epochs) holding the lock; 0: free
	sessions  uint64
	rec       *inSyncRecord
	history   []inSyncRecord // every record a primary wrote, whatever faults did to rec since
	blip      bool
}

// acquire takes the primary lock for a new session and returns its
// epoch and the session.
func (c *coordinator) acquire() (epoch, session uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lockIndex++
	c.sessions++
	c.holder = c.sessions
	return c.floor + c.lockIndex, c.sessions
}

// raiseEpoch is leader.Lease.RaiseEpoch: while session holds the lock,
// raise the floor so that its epoch exceeds above; it returns the new
// epoch, or false when the lock is no longer held.
func (c *coordinator) raiseEpoch(session, above uint64) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holder != session {
		return 0, false
	}
	if above+1 > c.floor {
		c.floor = above + 1
	}
	return c.floor + c.lockIndex, true
}

// release frees the lock if session still holds it.
func (c *coordinator) release(session uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holder == session {
		c.holder = 0
	}
}

// read returns the in-sync record; false when there is none.
func (c *coordinator) read() (inSyncRecord, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rec == nil {
		return inSyncRecord{}, false
	}
	return inSyncRecord{Epoch: c.rec.Epoch, Gen: c.rec.Gen, Replicas: slices.Clone(c.rec.Replicas)}, true
}

// newestRecord returns the newest record a primary wrote (nil: none).
func (c *coordinator) newestRecord() *inSyncRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.history) == 0 {
		return nil
	}
	r := c.history[len(c.history)-1]
	r.Replicas = slices.Clone(r.Replicas)
	return &r
}

// newest returns the set of the newest record a primary wrote: the
// replicas holding the volume's newest generation.
func (c *coordinator) newest() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.history) == 0 {
		return nil
	}
	return slices.Clone(c.history[len(c.history)-1].Replicas)
}

func (c *coordinator) loseRecord() {
	c.mu.Lock()
	c.rec = nil
	c.mu.Unlock()
}

// rollBack replaces the record with an older version (frac picks which);
// false if there is none older.
func (c *coordinator) rollBack(frac float64) (inSyncRecord, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.history) < 2 {
		return inSyncRecord{}, false
	}
	old := c.history[int(frac*float64(len(c.history)-1))]
	c.rec = &inSyncRecord{Epoch: old.Epoch, Gen: old.Gen, Replicas: slices.Clone(old.Replicas)}
	return old, true
}

// resetLockIndex sets the lock index back (to frac of its value), as a
// Consul rebuilt from a snapshot or a deleted and recreated lock key does;
// the epoch floor key is lost with it.
func (c *coordinator) resetLockIndex(frac float64) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lockIndex = uint64(frac * float64(c.lockIndex))
	c.floor = 0
	return c.lockIndex
}

func (c *coordinator) setBlip(on bool) {
	c.mu.Lock()
	c.blip = on
	c.mu.Unlock()
}

// errBlip is the in-sync record write error during a Consul blip.
const errBlip = "consul unavailable (blip)"

// hook is one primary's InSyncHook, writing under its lock (InSyncWriter).
type hook struct {
	c       *coordinator
	epoch   uint64
	session uint64
	dead    *atomic.Bool // its process has crashed
}

var _ replication.InSyncHook = hook{}

// SetInSync mirrors internal/primary's hook over leader.InSyncWriter: a
// lost lease or a newer record fences the engine (ErrFenced); a blip is an
// error the engine retries.
func (h hook) SetInSync(_ context.Context, epoch, gen uint64, inSync []string) error {
	c := h.c
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case h.dead.Load():
		return fmt.Errorf("%w: primary of epoch %d has crashed", replication.ErrFenced, h.epoch)
	case c.blip:
		return errors.New(errBlip)
	case epoch != h.epoch || c.holder != h.session:
		return fmt.Errorf("%w: lease of epoch %d lost", replication.ErrFenced, h.epoch)
	case c.rec != nil && c.rec.Epoch > epoch:
		return fmt.Errorf("%w: in-sync record of epoch %d is newer than %d", replication.ErrFenced, c.rec.Epoch, epoch)
	}
	set := slices.Clone(inSync)
	slices.Sort(set)
	c.rec = &inSyncRecord{Epoch: epoch, Gen: gen, Replicas: set}
	c.history = append(c.history, *c.rec)
	return nil
}
