package wire

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"regexp"
	"strings"
)

// The payloads both sides encode and decode, and the rules a request's
// volume id and size follow.

// BlockSize is the unit of volume sizes and of the dirty tracking to come.
const BlockSize = 4096

var volumeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidateVolumeID reports whether id can name a volume on disk, in a
// Consul key and in a file path: 1-128 characters of letters, digits,
// '.', '_' or '-', starting with a letter or digit, and never containing
// "..". So an id is always exactly one path segment and never "." or
// "..", whatever layer (HTTP path cleaning, filepath.Join) it meets;
// these are exactly the ids the plugin issues (plugin.volumeIDFor hashes
// every other name).
func ValidateVolumeID(id string) error {
	if !volumeIDPattern.MatchString(id) || strings.Contains(id, "..") {
		return fmt.Errorf("%w: volume id %.140q must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit, without \"..\"", ErrInvalid, id)
	}
	return nil
}

// ValidateSize reports whether size is a usable volume size.
func ValidateSize(size int64) error {
	if size <= 0 || size%BlockSize != 0 {
		return fmt.Errorf("%w: volume size %d is not a positive multiple of %d bytes (4 KiB)", ErrInvalid, size, BlockSize)
	}
	return nil
}

// NewID draws a random number that is never 0: a replica's incarnation,
// an engine's promise owner (0 means none for both).
func NewID() uint64 {
	for {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			panic(err) // crypto/rand never fails on Linux
		}
		if x := binary.BigEndian.Uint64(b[:]); x != 0 {
			return x
		}
	}
}

// OpenRequest is the payload of a FrameOpen.
type OpenRequest struct {
	Volume string `json:"volume"`
	Size   int64  `json:"size"`
	Create bool   `json:"create"`
}

// OpenReply is the payload of a FrameOpen reply.
type OpenReply struct {
	Size       int64  `json:"size"`
	Epoch      uint64 `json:"epoch"`
	Generation uint64 `json:"generation"`
	// Clean is false when the replica's last holder did not shut it down
	// cleanly. Created is true when this open created it, empty.
	Clean   bool `json:"clean"`
	Created bool `json:"created"`
	// ActivityLog is the replica's activity log (hot extents).
	ActivityLog []uint64 `json:"activity_log,omitempty"`
	// Incarnation, Membership and TargetGen are the replica's (see
	// replica.Meta).
	Incarnation uint64     `json:"incarnation"`
	Membership  Membership `json:"membership"`
	TargetGen   uint64     `json:"target_gen,omitempty"`
	// BootID identifies the replica host's boot: when it changed since a
	// replica was dropped, the host restarted and lost what was only in
	// its page cache.
	BootID string `json:"boot_id,omitempty"`
}

// Membership is an in-sync set and its generation (DRBD's current data
// generation, as a counter). The generation grows by one with every
// change of the set. Generation 0 with no replicas means "never a member
// of any set": a new or wiped replica. It is the JSON payload of a
// FrameMembership, and part of an OpenReply.
type Membership struct {
	Gen      uint64   `json:"gen"`
	Replicas []string `json:"replicas,omitempty"`
}

// PeerPayload encodes a FramePutBitmap payload.
func PeerPayload(peer string, enc []byte) []byte {
	out := binary.BigEndian.AppendUint16(nil, uint16(len(peer)))
	return append(append(out, peer...), enc...)
}

// SplitPeerPayload decodes a FramePutBitmap payload: the peer's name and
// its encoded bitmap.
func SplitPeerPayload(p []byte) (string, []byte, error) {
	if len(p) < 2 || int(binary.BigEndian.Uint16(p)) > len(p)-2 {
		return "", nil, fmt.Errorf("%w: malformed bitmap payload", ErrInvalid)
	}
	n := int(binary.BigEndian.Uint16(p))
	return string(p[2 : 2+n]), p[2+n:], nil
}
