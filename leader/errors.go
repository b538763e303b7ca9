package leader

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound means a record does not exist in Consul.
	ErrNotFound = errors.New("not found in consul")
	// ErrConflict means a check-and-set write lost to another writer. The
	// concrete error is a *ConflictError.
	ErrConflict = errors.New("check-and-set conflict")
	// ErrLeaseLost means a lease is no longer held: its session was
	// invalidated, the lock was taken by another session, or it could not be
	// confirmed and was then found replaced. A lost lease is never regained;
	// acquire a new one (with a new epoch).
	ErrLeaseLost = errors.New("lease lost")
	// ErrLeaseReleased means the holder released the lease itself.
	ErrLeaseReleased = errors.New("lease released")
	// ErrNoSession means the agent has no Consul session yet.
	ErrNoSession = errors.New("no consul session")
	// ErrInvalid means a caller passed an invalid argument or config.
	ErrInvalid = errors.New("invalid argument")
)

// ConflictError is a check-and-set write that lost: the key changed since
// the writer read it, or it now holds a record from a newer epoch than the
// writer's. It matches ErrConflict with errors.Is.
type ConflictError struct {
	Key string
	// Index is the modify index the writer expected; Current is the one
	// found (0 when the key is absent).
	Index, Current uint64
	// Epoch is the writer's epoch and CurrentEpoch the record's, for
	// records that carry one (0 otherwise).
	Epoch, CurrentEpoch uint64
	// Reason says which check failed.
	Reason string
}

func (e *ConflictError) Error() string {
	s := fmt.Sprintf("%s: %s: %s (expected index %d, found %d", ErrConflict, e.Key, e.Reason, e.Index, e.Current)
	if e.Epoch != 0 || e.CurrentEpoch != 0 {
		s += fmt.Sprintf(", writer epoch %d, recorded epoch %d", e.Epoch, e.CurrentEpoch)
	}
	return s + ")"
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// LeaseLostError says which lease was lost and why. It matches ErrLeaseLost
// (or ErrLeaseReleased for a clean release) with errors.Is.
type LeaseLostError struct {
	Key   string
	Epoch uint64
	// Released is true when the holder released the lease itself.
	Released bool
	Reason   string
}

func (e *LeaseLostError) Error() string {
	what := ErrLeaseLost
	if e.Released {
		what = ErrLeaseReleased
	}
	return fmt.Sprintf("%s: %s epoch %d: %s", what, e.Key, e.Epoch, e.Reason)
}

// Is makes errors.Is match ErrLeaseLost or ErrLeaseReleased.
func (e *LeaseLostError) Is(target error) bool {
	if e.Released {
		return target == ErrLeaseReleased
	}
	return target == ErrLeaseLost
}
