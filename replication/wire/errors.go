package wire

import (
	"errors"
	"fmt"
)

// The errors each side of the protocol tells the other, by a reply's
// Status (see StatusOf and ReplicaError): a replica's refusal arrives at
// the primary as an error that errors.Is matches against the same
// sentinel the replica returned.

var (
	// ErrStaleEpoch means a frame carried an epoch lower than the one the
	// replica has promised: its sender has been replaced.
	ErrStaleEpoch = errors.New("stale epoch")
	// ErrVolumeNotFound means the store holds no replica of the volume.
	ErrVolumeNotFound = errors.New("no replica of that volume here")
	// ErrInvalid means a request was malformed (bad id, size, range).
	ErrInvalid = errors.New("invalid request")
	// ErrReplicaBusy means a replica cannot be deleted because it is open
	// (a primary is connected to it).
	ErrReplicaBusy = errors.New("replica in use")
	// ErrOutOfRange means a request lies outside the volume.
	ErrOutOfRange = errors.New("request outside the volume")
	// ErrNoSpace means a replica's disk is full.
	ErrNoSpace = errors.New("no space left on replica")
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
	// ErrPermissionDenied means the replica server refused the connection's
	// peer: its identity is not allowed to reach replicas.
	ErrPermissionDenied = errors.New("permission denied")
)

// MaxEpochJump is how far above its highest promised epoch a replica
// accepts a promise (explicit, or implicit in a request at a higher epoch).
const MaxEpochJump = 1 << 32
