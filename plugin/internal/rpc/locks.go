package rpc

import (
	"sync"

	"google.golang.org/grpc/codes"
)

// VolumeLocks keeps one operation in flight per volume (docs/architecture.md, "Conventions", rule 10):
// a second RPC for a volume that is busy gets Aborted and the CO retries.
type VolumeLocks struct {
	mu   sync.Mutex
	busy map[string]bool
}

// TryLock takes key's lock if it is free and returns its unlock, or nil.
func (l *VolumeLocks) TryLock(key string) func() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.busy == nil {
		l.busy = map[string]bool{}
	}
	if l.busy[key] {
		return nil
	}
	l.busy[key] = true
	return func() {
		l.mu.Lock()
		delete(l.busy, key)
		l.mu.Unlock()
	}
}

// Lock takes volume id's lock for an RPC and returns its unlock, or
// Aborted when another RPC on the volume is in flight.
func (l *VolumeLocks) Lock(id string) (func(), error) {
	unlock := l.TryLock(id)
	if unlock == nil {
		return nil, Errf(codes.Aborted, "an operation on volume %s is already in progress", id)
	}
	return unlock, nil
}
