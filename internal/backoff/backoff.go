// Package backoff is the one retry delay formula of Saddlebag: the delay
// doubles with every failed attempt from a base up to a ceiling. The
// lease's acquire retries (leader), the NBD accept loop and resync
// retries (replication) and Connect certificate watches
// (internal/connecttls) all use it.
//
// There is no jitter: the data plane's schedules must replay exactly
// (docs/architecture.md, "Conventions", rule 13), and every caller
// retries against a single peer, not a crowd.
//
// It imports no other Saddlebag package.
package backoff

import "time"

// Delay is how long to wait after failed attempt number attempt (0 for
// the first failure): base doubled attempt times, at most ceiling. A
// ceiling below base yields ceiling; a negative attempt counts as 0.
func Delay(base, ceiling time.Duration, attempt int) time.Duration {
	if base <= 0 || base >= ceiling {
		return max(min(base, ceiling), 0)
	}
	d := base
	for range max(attempt, 0) {
		if d >= ceiling/2 {
			return ceiling
		}
		d *= 2
	}
	return d
}
