package replication

import (
	"errors"

	"github.com/saddlebag/saddlebag/replication/wire"
)

var (
	// ErrFenced means a primary with a higher epoch has taken over the
	// volume; this engine must not complete any more I/O.
	ErrFenced = errors.New("fenced by a newer primary")
	// ErrUnflushedLost means the last in-sync replica's host lost power
	// after writes it had acknowledged but not flushed: they are gone, and
	// a flush cannot make them durable.
	ErrUnflushedLost = errors.New("the last in-sync replica lost power: writes since the last flush are lost")
	// ErrNoReplicas means no in-sync replica is left to serve the request.
	ErrNoReplicas = errors.New("no in-sync replica")
)

// The errors of the Device contract that a replica's refusal also
// produces: the engine returns these very sentinels (replication/wire's),
// so a frontend matches them with errors.Is whichever side refused.
var (
	// ErrOutOfRange means a request lies outside the volume.
	ErrOutOfRange = wire.ErrOutOfRange
	// ErrNoSpace means a replica's disk is full.
	ErrNoSpace = wire.ErrNoSpace
	// ErrInvalid means a request was malformed.
	ErrInvalid = wire.ErrInvalid
)

// BlockSize is the unit of volume sizes (replication/wire's).
const BlockSize = wire.BlockSize
