package plugin

import "sync"

// volumeLocks keeps one operation in flight per volume (docs/architecture.md, "Conventions", rule 10):
// a second RPC for a volume that is busy gets Aborted and the CO retries.
type volumeLocks struct {
	mu   sync.Mutex
	busy map[string]bool
}

// tryLock takes key's lock if it is free and returns its unlock, or nil.
func (l *volumeLocks) tryLock(key string) func() {
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
