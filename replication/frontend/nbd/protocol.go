package nbd

// The protocol's numbers (proto.md), as this server uses them, and the
// limits it keeps.

import (
	"errors"
	"time"
)

// Magic numbers.
const (
	nbdMagic            uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic         uint64 = 0x49484156454f5054 // "IHAVEOPT"
	nbdOptReplyMagic    uint64 = 0x0003e889045565a9
	nbdRequestMagic     uint32 = 0x25609513
	nbdSimpleReplyMagic uint32 = 0x67446698
)

// Handshake flags (server) and client flags.
const (
	nbdFlagFixedNewstyle  uint16 = 1 << 0
	nbdFlagNoZeroes       uint16 = 1 << 1
	nbdFlagCFixedNewstyle uint32 = 1 << 0
	nbdFlagCNoZeroes      uint32 = 1 << 1
)

// Transmission flags.
const (
	nbdFlagHasFlags        uint16 = 1 << 0
	nbdFlagReadOnly        uint16 = 1 << 1
	nbdFlagSendFlush       uint16 = 1 << 2
	nbdFlagSendFUA         uint16 = 1 << 3
	nbdFlagRotational      uint16 = 1 << 4
	nbdFlagSendTrim        uint16 = 1 << 5
	nbdFlagSendWriteZeroes uint16 = 1 << 6
	nbdFlagSendDF          uint16 = 1 << 7
	nbdFlagCanMultiConn    uint16 = 1 << 8
)

// nbdTransmissionFlags is what every export advertises. CAN_MULTI_CONN is
// safe because the Device has no per-connection cache: Flush covers every
// write completed before it on any connection, and a FUA write is durable
// when WriteAt returns.
const nbdTransmissionFlags = nbdFlagHasFlags | nbdFlagSendFlush | nbdFlagSendFUA |
	nbdFlagSendTrim | nbdFlagSendWriteZeroes | nbdFlagCanMultiConn

// Options.
const (
	nbdOptExportName      uint32 = 1
	nbdOptAbort           uint32 = 2
	nbdOptList            uint32 = 3
	nbdOptPeekExport      uint32 = 4
	nbdOptStartTLS        uint32 = 5
	nbdOptInfo            uint32 = 6
	nbdOptGo              uint32 = 7
	nbdOptStructuredReply uint32 = 8
	nbdOptListMetaContext uint32 = 9
	nbdOptSetMetaContext  uint32 = 10
	nbdOptExtendedHeaders uint32 = 11
	nbdRepAck             uint32 = 1
	nbdRepServer          uint32 = 2
	nbdRepInfo            uint32 = 3
	nbdRepErrUnsup        uint32 = 1<<31 + 1
	nbdRepErrPolicy       uint32 = 1<<31 + 2
	nbdRepErrInvalid      uint32 = 1<<31 + 3
	nbdRepErrUnknown      uint32 = 1<<31 + 6
	nbdInfoExport         uint16 = 0
	nbdInfoName           uint16 = 1
	nbdInfoDescription    uint16 = 2
	nbdInfoBlockSize      uint16 = 3
)

// Sizes and limits.
const (
	nbdMaxOptionLen         = 64 << 10 // longest option payload accepted
	nbdMaxStringLen         = 4096     // longest export name (spec limit)
	nbdZeroPadLen           = 124      // EXPORT_NAME reply padding without NO_ZEROES
	nbdExportNameReplyLen   = 8 + 2
	nbdOptHeaderLen         = 8 + 4 + 4
	nbdOptReplyHeaderLen    = 8 + 4 + 4 + 4
	nbdHandshakeGreetingLen = 8 + 8 + 2
	nbdMinBlockSize         = 512
	nbdPreferredBlockSize   = 4096
	nbdMaxPayload           = 32 << 20 // largest READ/WRITE accepted (and advertised)
	nbdRequestHeaderLen     = 4 + 2 + 2 + 8 + 8 + 4
	nbdSimpleReplyHeaderLen = 4 + 4 + 8
	nbdMaxInFlight          = 64  // requests in flight per connection
	nbdInFlightMiB          = 128 // READ/WRITE buffer budget per connection, MiB
	nbdReadBufferSize       = 64 << 10
	nbdZeroChunk            = 1 << 20 // WRITE_ZEROES with NO_HOLE writes this much at a time
	nbdAcceptBackoffMin     = 5 * time.Millisecond
	nbdAcceptBackoffMax     = time.Second
	nbdMiB                  = 1 << 20
)

// Commands and command flags.
const (
	nbdCmdRead         uint16 = 0
	nbdCmdWrite        uint16 = 1
	nbdCmdDisc         uint16 = 2
	nbdCmdFlush        uint16 = 3
	nbdCmdTrim         uint16 = 4
	nbdCmdCache        uint16 = 5
	nbdCmdWriteZeroes  uint16 = 6
	nbdCmdBlockStatus  uint16 = 7
	nbdCmdFlagFUA      uint16 = 1 << 0
	nbdCmdFlagNoHole   uint16 = 1 << 1
	nbdCmdFlagDF       uint16 = 1 << 2
	nbdCmdFlagReqOne   uint16 = 1 << 3
	nbdCmdFlagFastZero uint16 = 1 << 4
)

// Error values carried in simple replies (Linux errno numbers, as the
// protocol mandates whatever the platform).
const (
	nbdEPERM     uint32 = 1
	nbdEIO       uint32 = 5
	nbdENOMEM    uint32 = 12
	nbdEINVAL    uint32 = 22
	nbdENOSPC    uint32 = 28
	nbdEOVERFLOW uint32 = 75
	nbdENOTSUP   uint32 = 95
	nbdESHUTDOWN uint32 = 108
)

// nbdErrProtocol marks a client violation of the protocol; the connection is
// then dropped (a hard disconnect, which the spec allows).
var nbdErrProtocol = errors.New("nbd protocol violation")
