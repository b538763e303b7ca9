package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// The wire protocol between a primary and its replicas.
//
// Every frame is a fixed 56-byte header followed by a payload:
//
//	off size field
//	  0    4 magic "SBG1"
//	  4    1 protocol version (1)
//	  5    1 frame type (replies have ReplyBit set)
//	  6    2 flags (FlagFUA)
//	  8    4 status (replies only; 0 in requests)
//	 12    8 epoch of the sender (the primary's epoch, echoed in replies)
//	 20    8 request id, echoed in the reply
//	 28    8 offset in bytes
//	 36    8 length in bytes (READ and TRIM)
//	 44    4 payload length
//	 48    4 CRC-32C of the payload
//	 52    4 CRC-32C of bytes 0..51
//
// All integers are big-endian. Frame and payload sizes are bounded, and a
// frame that fails any check is rejected before anything acts on it: the
// receiver closes the connection. The payload has its own checksum so a
// primary computes it once for a write it sends to every replica.
const (
	frameMagic      = 0x53424731 // "SBG1"
	ProtocolVersion = 1
	// HeaderSize is the size of a frame's header.
	HeaderSize = 56
	// MaxIOSize bounds the data of one READ or WRITE.
	MaxIOSize = 32 << 20
	// maxPayload bounds any payload: an I/O plus room for nothing else.
	maxPayload = MaxIOSize
	// MaxControlPayload bounds payloads of frames that carry no block data.
	MaxControlPayload = 64 << 10
)

// FrameType says what a frame asks for.
type FrameType uint8

const (
	// FrameOpen binds the connection to a volume: payload is the JSON
	// OpenRequest; the reply payload is the JSON OpenReply.
	FrameOpen FrameType = 1
	// FramePromise asks the replica to refuse every epoch below this one;
	// the payload, if any, is the 8-byte owner of the promise (see
	// replica.Volume.PromiseOwned).
	// The reply carries the replica's state as of the promise (a JSON
	// OpenReply): nothing a previous primary does can change it after.
	FramePromise FrameType = 2
	// FrameWrite writes the payload at Offset.
	FrameWrite FrameType = 3
	// FrameRead reads Length bytes at Offset; the reply carries them.
	FrameRead FrameType = 4
	// FrameFlush makes every earlier write on the replica durable.
	FrameFlush FrameType = 5
	// FrameTrim punches a hole of Length bytes at Offset.
	FrameTrim FrameType = 6
	// FrameActivity replaces the activity log: payload is big-endian
	// uint64 extent numbers.
	FrameActivity FrameType = 7
	// FramePutBitmap stores the bitmap of blocks a peer misses: payload is
	// a uint16 name length, the peer's name, then the encoded bitmap
	// (empty: delete it).
	FramePutBitmap FrameType = 8
	// FrameGetBitmap fetches a peer's bitmap: payload is the peer's name.
	FrameGetBitmap FrameType = 9
	// FrameChecksum asks for a CRC-64 of each block in [Offset, +Length).
	FrameChecksum FrameType = 10
	// FrameAllocated asks which ranges of [Offset, +Length) hold data: the
	// reply is big-endian (offset, length) uint64 pairs.
	FrameAllocated FrameType = 11
	// FrameDelete removes a replica from the store: payload is the volume
	// id. It is sent on a connection not bound to a volume (the
	// controller's DeleteVolume); a replica that is open is refused with
	// StatusBusy, an absent one is deleted already.
	FrameDelete FrameType = 12
	// FrameMembership records the in-sync set the replica is a member of:
	// payload is the JSON Membership.
	FrameMembership FrameType = 13
	// FrameTarget records that a primary makes the replica a resync
	// target under its in-sync generation: payload is that generation,
	// a big-endian uint64 (see replica.Meta.TargetGen).
	FrameTarget FrameType = 14

	// ReplyBit is set in the type of a reply: a reply to FrameWrite has
	// type FrameWrite|ReplyBit.
	ReplyBit FrameType = 0x80
)

func (t FrameType) String() string {
	names := map[FrameType]string{FrameOpen: "open", FramePromise: "promise", FrameWrite: "write",
		FrameRead: "read", FrameFlush: "flush", FrameTrim: "trim", FrameActivity: "activity",
		FramePutBitmap: "put-bitmap", FrameGetBitmap: "get-bitmap", FrameChecksum: "checksum",
		FrameAllocated: "allocated", FrameDelete: "delete", FrameMembership: "membership",
		FrameTarget: "target"}
	if n, ok := names[t&^ReplyBit]; ok {
		if t&ReplyBit != 0 {
			return n + "-reply"
		}
		return n
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// FlagFUA on a write asks for the data to be durable before the reply.
const FlagFUA uint16 = 1

// Status is a reply's outcome.
type Status uint32

const (
	StatusOK Status = iota
	StatusStaleEpoch
	StatusIOError
	StatusNoSpace
	StatusInvalid
	StatusNotFound
	StatusOutOfRange
	StatusNotOpen
	StatusBusy
	// StatusDenied: the replica server does not let this peer in (see
	// replica.Guard); the payload says who the peer is and why.
	StatusDenied
	// StatusSuperseded: the connection was replaced by a newer one of the
	// same primary (ErrSuperseded).
	StatusSuperseded
)

// statusErrors maps statuses to the sentinel each wraps: a replica answers
// an error wrapping one with its status (StatusOf), and a ReplicaError of
// that status unwraps to it on the primary's side.
var statusErrors = map[Status]error{
	StatusStaleEpoch: ErrStaleEpoch,
	StatusNoSpace:    ErrNoSpace,
	StatusInvalid:    ErrInvalid,
	StatusNotFound:   ErrVolumeNotFound,
	StatusOutOfRange: ErrOutOfRange,
	StatusBusy:       ErrReplicaBusy,
	StatusDenied:     ErrPermissionDenied,
	StatusSuperseded: ErrSuperseded,
}

// StatusOf is the status a replica answers for err: the one whose
// sentinel err wraps, else StatusIOError.
func StatusOf(err error) Status {
	for st, sentinel := range statusErrors {
		if errors.Is(err, sentinel) {
			return st
		}
	}
	return StatusIOError
}

// ReplicaError is a non-OK reply from a replica.
type ReplicaError struct {
	Status  Status
	Message string
}

func (e *ReplicaError) Error() string { return e.Message }

// Unwrap lets errors.Is match the sentinel for the status.
func (e *ReplicaError) Unwrap() error { return statusErrors[e.Status] }

// Frame is one decoded frame. Payload may alias a caller's buffer.
type Frame struct {
	Type    FrameType
	Flags   uint16
	Status  Status
	Epoch   uint64
	ID      uint64
	Offset  uint64
	Length  uint64
	Payload []byte
}

// ErrBadFrame wraps every decoding failure.
var ErrBadFrame = errors.New("bad frame")

// castagnoli is the CRC-32C table of the frame checksums.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// PayloadSum is the checksum a header carries for payload p.
func PayloadSum(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

// PutHeader encodes f's header into h (HeaderSize bytes); psum must
// be PayloadSum(f.Payload).
func PutHeader(h []byte, f *Frame, psum uint32) {
	binary.BigEndian.PutUint32(h[0:], frameMagic)
	h[4] = ProtocolVersion
	h[5] = byte(f.Type)
	binary.BigEndian.PutUint16(h[6:], f.Flags)
	binary.BigEndian.PutUint32(h[8:], uint32(f.Status))
	binary.BigEndian.PutUint64(h[12:], f.Epoch)
	binary.BigEndian.PutUint64(h[20:], f.ID)
	binary.BigEndian.PutUint64(h[28:], f.Offset)
	binary.BigEndian.PutUint64(h[36:], f.Length)
	binary.BigEndian.PutUint32(h[44:], uint32(len(f.Payload)))
	binary.BigEndian.PutUint32(h[48:], psum)
	binary.BigEndian.PutUint32(h[52:], crc32.Checksum(h[:52], castagnoli))
}

// AppendFrame appends the encoding of f to dst.
func AppendFrame(dst []byte, f *Frame) []byte {
	var h [HeaderSize]byte
	PutHeader(h[:], f, PayloadSum(f.Payload))
	return append(append(dst, h[:]...), f.Payload...)
}

// parseHeader decodes and checks a header, all but the payload checksum.
// It returns the payload length.
func parseHeader(h []byte, f *Frame) (int, error) {
	if m := binary.BigEndian.Uint32(h[0:]); m != frameMagic {
		return 0, fmt.Errorf("%w: magic %#08x, want %#08x", ErrBadFrame, m, frameMagic)
	}
	if got, want := crc32.Checksum(h[:52], castagnoli), binary.BigEndian.Uint32(h[52:]); got != want {
		return 0, fmt.Errorf("%w: header checksum %#08x, header says %#08x", ErrBadFrame, got, want)
	}
	if h[4] != ProtocolVersion {
		return 0, fmt.Errorf("%w: protocol version %d, this side speaks %d", ErrBadFrame, h[4], ProtocolVersion)
	}
	f.Type = FrameType(h[5])
	f.Flags = binary.BigEndian.Uint16(h[6:])
	f.Status = Status(binary.BigEndian.Uint32(h[8:]))
	f.Epoch = binary.BigEndian.Uint64(h[12:])
	f.ID = binary.BigEndian.Uint64(h[20:])
	f.Offset = binary.BigEndian.Uint64(h[28:])
	f.Length = binary.BigEndian.Uint64(h[36:])
	n := binary.BigEndian.Uint32(h[44:])
	limit := uint32(MaxControlPayload)
	if base := f.Type &^ ReplyBit; (base == FrameWrite && f.Type&ReplyBit == 0) || (base == FrameRead && f.Type&ReplyBit != 0) {
		limit = maxPayload
	}
	if n > limit {
		return 0, fmt.Errorf("%w: %s payload of %d bytes exceeds the limit of %d", ErrBadFrame, f.Type, n, limit)
	}
	if f.Length > MaxIOSize && f.Type == FrameRead {
		return 0, fmt.Errorf("%w: read of %d bytes exceeds the limit of %d", ErrBadFrame, f.Length, MaxIOSize)
	}
	return int(n), nil
}

func checkPayload(h, payload []byte) error {
	want := binary.BigEndian.Uint32(h[48:])
	if got := PayloadSum(payload); got != want {
		return fmt.Errorf("%w: payload checksum %#08x, header says %#08x", ErrBadFrame, got, want)
	}
	return nil
}

// ReadFrame reads one frame from r. The payload is read into buf when it is
// large enough (buf may be nil). A short stream gives an error wrapping
// io.ErrUnexpectedEOF (or io.EOF before the first byte); a malformed frame an
// error wrapping ErrBadFrame.
func ReadFrame(r io.Reader, buf []byte) (Frame, error) {
	var f Frame
	err := ReadFrameInto(r, &f, func(*Frame, int) []byte { return buf })
	return f, err
}

// ReadFrameInto reads one frame into f. After the header is checked, payloadBuf
// may offer a buffer for the n payload bytes (nil or too small: one is
// allocated), so a reply can land straight in its caller's buffer.
func ReadFrameInto(r io.Reader, f *Frame, payloadBuf func(f *Frame, n int) []byte) error {
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return err
	}
	n, err := parseHeader(h[:], f)
	if err != nil {
		return err
	}
	if buf := payloadBuf(f, n); cap(buf) >= n {
		f.Payload = buf[:n]
	} else {
		f.Payload = make([]byte, n)
	}
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%w: payload: %w", ErrBadFrame, err)
	}
	return checkPayload(h[:], f.Payload)
}
