// Package fake holds test doubles for leader's interfaces, for unit tests
// only.
package fake

import (
	"sync"
	"time"
)

// GateEvent is one call recorded by Gate.
type GateEvent struct {
	Op    string // "hold", "release" or "fence"
	At    time.Time
	Cause error
}

// Gate is a leader.IOGate that records every call with its time.
type Gate struct {
	mu     sync.Mutex
	events []GateEvent
	calls  chan struct{}
}

// NewGate returns an empty recording gate.
func NewGate() *Gate { return &Gate{calls: make(chan struct{}, 1024)} }

func (g *Gate) add(op string, cause error) {
	g.mu.Lock()
	g.events = append(g.events, GateEvent{Op: op, At: time.Now(), Cause: cause})
	g.mu.Unlock()
	select {
	case g.calls <- struct{}{}:
	default:
	}
}

// Hold records a hold.
func (g *Gate) Hold() { g.add("hold", nil) }

// Release records a release.
func (g *Gate) Release() { g.add("release", nil) }

// Fence records a fence.
func (g *Gate) Fence(cause error) { g.add("fence", cause) }

// Events returns a copy of the calls so far.
func (g *Gate) Events() []GateEvent {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]GateEvent(nil), g.events...)
}

// First returns the first event with op, if any.
func (g *Gate) First(op string) (GateEvent, bool) {
	for _, e := range g.Events() {
		if e.Op == op {
			return e, true
		}
	}
	return GateEvent{}, false
}

// Calls signals (coalesced) after each call.
func (g *Gate) Calls() <-chan struct{} { return g.calls }
