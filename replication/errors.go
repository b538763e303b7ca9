package replication

import "errors"

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
)
