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
	// ErrNoReplicas means no in-sync replica is left to serve the request.
	ErrNoReplicas = errors.New("no in-sync replica")
)
