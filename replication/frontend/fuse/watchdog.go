package fuse

// The watchdog: a FUSE request has no timeout in the kernel, so a hung
// server would block I/O forever; the watchdog aborts the connection
// when requests stop completing and the Device does not say it holds
// them on purpose.

import (
	"time"

	"github.com/saddlebag/saddlebag/replication"
)

// watchdog aborts the connection when requests wait and none completes for
// timeout while the Device is not deliberately holding them: the server
// (or the Device under it) is hung. A Device that implements HoldingDevice
// and reports a hold (the engine waiting for the primary lease, for
// min_in_sync replicas, or for the in-sync set to be recorded) is left to
// hold for as long as it takes; the watchdog says so once, at warn, and
// keeps watching. It counts ticks rather than reading the clock so that the
// decision is deterministic.
func (m *Mount) watchdog(timeout time.Duration) {
	const ticksPerTimeout = 8
	tick := time.NewTicker(timeout / ticksPerTimeout)
	defer tick.Stop()
	holding := func() (bool, string) { return false, "" }
	if h, ok := m.fs.dev.(replication.HoldingDevice); ok {
		holding = h.Holding
	}
	st := stallTracker{limit: ticksPerTimeout}
	for {
		select {
		case <-m.stop:
			return
		case <-m.done:
			return
		case <-tick.C:
		}
		waiting := m.fs.inflight.Load()
		switch v, why := st.tick(waiting, m.fs.completed.Load(), holding); v {
		case stallHeld:
			m.log.Warn("fuse requests wait because the engine holds them; not aborting the connection",
				"reason", why, "waiting", waiting, "hung_timeout", timeout)
		case stallResumed:
			m.log.Info("held fuse requests complete again")
		case stallHung:
			m.log.Error("fuse requests made no progress: server hung, aborting the connection",
				"waiting", waiting, "timeout", timeout)
			if err := m.Abort(); err != nil {
				m.log.Error("abort hung fuse connection", "error", err)
			}
			return
		}
	}
}

// stallVerdict is what stallTracker.tick concluded.
type stallVerdict int

const (
	stallNone    stallVerdict = iota
	stallHeld                 // a stall began to be a deliberate hold: say so
	stallResumed              // requests complete again after a hold
	stallHung                 // limit ticks without progress or hold: abort
)

// stallTracker is the watchdog's decision, one tick at a time. A tick with
// requests waiting and none completed since the last one is a stalled
// tick; limit stalled ticks make a hung server. Ticks on which the Device
// holds deliberately do not count, but neither do they reset the count:
// only progress (a request completed) or no request waiting resets it. So
// a Device that is hung and reports a hold now and then is still aborted,
// after limit ticks on which it did not hold, rather than kept alive by
// each flicker of the hold.
type stallTracker struct {
	limit    int
	lastDone uint64
	stalled  int  // stalled ticks without a hold since the last progress
	held     bool // this stall was reported as a hold
}

// tick takes the number of requests waiting, the count of requests
// completed so far, and the Device's hold state, asked only when the
// requests are stalled. It returns the verdict, and with stallHeld the
// reason the Device gave.
func (s *stallTracker) tick(waiting int64, done uint64, holding func() (bool, string)) (stallVerdict, string) {
	if waiting == 0 || done != s.lastDone {
		s.lastDone, s.stalled = done, 0
		if s.held {
			s.held = false
			return stallResumed, ""
		}
		return stallNone, ""
	}
	if held, why := holding(); held {
		if !s.held {
			s.held = true
			return stallHeld, why
		}
		return stallNone, ""
	}
	if s.stalled++; s.stalled >= s.limit {
		return stallHung, ""
	}
	return stallNone, ""
}
