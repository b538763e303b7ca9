package replication

import (
	"errors"
	"fmt"
)

var (
	// ErrFenced means a primary with a higher epoch has taken over the
	// volume; this engine must not complete any more I/O.
	ErrFenced = errors.New("fenced by a newer primary")
	// ErrOutOfRange means a request lies outside the volume.
	ErrOutOfRange = errors.New("request outside the volume")
	// ErrNoSpace means a replica's disk is full.
	ErrNoSpace = errors.New("no space left on replica")
	// ErrUnflushedLost means the last in-sync replica's host lost power
	// after writes it had acknowledged but not flushed: they are gone, and
	// a flush cannot make them durable.
	ErrUnflushedLost = errors.New("the last in-sync replica lost power: writes since the last flush are lost")
	// ErrNoReplicas means no in-sync replica is left to serve the request.
	ErrNoReplicas = errors.New("no in-sync replica")
	// ErrEpochJump means a frame's epoch is more than MaxEpochJump above
	// the highest epoch the replica has promised. Epochs are Consul lock
	// indexes (plus a floor raised just above a promise): they grow by
	// one per acquisition, so no honest primary ever jumps that far. A
	// huge epoch is an attack (one frame with epoch 2^64-1 would fence
	// every future primary for good) or corruption, and is refused.
	// It wraps ErrInvalid (StatusInvalid on the wire).
	ErrEpochJump = fmt.Errorf("%w: implausible epoch jump", ErrInvalid)
	// ErrSuperseded means a request came on a connection whose primary
	// has since promised the replica on a newer connection: the old one
	// is abandoned, and a late frame of it (still in a socket buffer when
	// the primary redialled) must not overwrite what the new one did.
	ErrSuperseded = errors.New("connection replaced by a newer one of its primary")
)

// MaxEpochJump is how far above its highest promised epoch a replica
// accepts a promise (explicit, or implicit in a request at a higher epoch).
const MaxEpochJump = 1 << 32
