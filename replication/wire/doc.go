// Package wire is the protocol between a primary and its replicas, and
// what both sides must agree on: versioned, framed, checksummed, bounded
// frames that carry the sender's epoch and a request id (wire.go); the
// frame types and reply statuses, and the sentinel errors a status
// stands for, so that a replica's refusal reaches the primary as an
// error matching the very sentinel the replica returned (errors.go); the
// payloads both sides encode and decode, the in-sync Membership among
// them, and the rules a volume id and size follow (payload.go).
//
// Contract: a frame that fails any check is rejected before anything
// acts on it (ErrBadFrame); no payload exceeds its bound (MaxIOSize for
// block data, MaxControlPayload for the rest), so a receiver never
// allocates what a peer merely claims. Changing the encoding of a frame
// or a payload is a protocol change: ProtocolVersion says which one a
// side speaks.
//
// It is used by the replica side (replication/replica), the primary
// engine (replication) and the tools built on them. It imports none of
// Saddlebag's packages: it must not import replication,
// replication/replica or anything that uses them.
package wire
