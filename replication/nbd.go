package replication

// NBD (Network Block Device) frontend: serves one Device over the NBD
// protocol (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).
//
// Scope, on purpose small:
//   - fixed newstyle negotiation only, with NBD_FLAG_NO_ZEROES;
//   - options EXPORT_NAME, ABORT, LIST, INFO and GO; every other option
//     (STARTTLS, STRUCTURED_REPLY, meta contexts, extended headers, unknown)
//     gets an NBD_REP_ERR_* reply so that real clients fall back;
//   - simple replies only; commands READ, WRITE, DISC, FLUSH, TRIM and
//     WRITE_ZEROES.
//
// Requests on one connection run concurrently: the connection's read loop
// decodes each request (reading a WRITE's payload straight into a pooled
// buffer) and hands it to its own goroutine; replies are written under a
// mutex, a READ's header and data together in one vectored write.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/internal/backoff"
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

// NBDServer serves one Device over the NBD protocol.
type NBDServer struct {
	dev        Device
	exportName string
	log        hclog.Logger
	connIDs    atomic.Uint64
}

// NewNBDServer returns a server exporting dev under exportName; the default
// export name "" is accepted as well. A nil log discards messages.
func NewNBDServer(dev Device, exportName string, log hclog.Logger) *NBDServer {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &NBDServer{dev: dev, exportName: exportName, log: log}
}

// Serve accepts connections on ln until ctx is done or ln is closed, and
// handles each connection in its own goroutine. When it stops accepting it
// closes ln and every open connection, then returns once all connection
// goroutines have exited. It returns nil when stopped by ctx or by ln being
// closed, otherwise the error Accept failed with.
func (s *NBDServer) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopClose := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stopClose()

	var wg sync.WaitGroup
	var serveErr error
	failures := 0 // accepts failed in a row
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			var tmp interface{ Temporary() bool }
			if errors.As(err, &tmp) && tmp.Temporary() {
				// e.g. EMFILE: wait and retry rather than stopping the server.
				delay := backoff.Delay(nbdAcceptBackoffMin, nbdAcceptBackoffMax, failures)
				failures++
				s.log.Error("nbd accept failed, retrying", "error", err, "delay", delay)
				select {
				case <-time.After(delay):
					continue
				case <-ctx.Done():
				}
				break
			}
			s.log.Error("nbd accept failed", "error", err)
			serveErr = fmt.Errorf("nbd accept: %w", err)
			break
		}
		failures = 0
		id := s.connIDs.Add(1)
		wg.Go(func() { s.serveConn(ctx, conn, id) })
	}
	cancel() // closes ln (if still open) and every connection
	wg.Wait()
	return serveErr
}

// nbdConn is one client connection.
type nbdConn struct {
	s    *NBDServer
	ctx  context.Context // cancelled when the connection is torn down
	conn net.Conn
	r    *bufio.Reader
	log  hclog.Logger
	size int64

	// noZeroes: the client set NBD_FLAG_C_NO_ZEROES.
	noZeroes bool

	// slots bounds requests in flight; mib bounds their READ/WRITE buffers
	// (one token per started MiB). Only the read loop acquires, so taking
	// several mib tokens one at a time cannot deadlock.
	slots chan struct{}
	mib   chan struct{}
	wg    sync.WaitGroup // in-flight request goroutines

	wmu    sync.Mutex // serialises replies
	broken bool       // a reply write failed; guarded by wmu

	fencedLogged atomic.Bool // an ErrFenced failure was logged at error level
}

// nbdRequest is a decoded transmission request.
type nbdRequest struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
}

// serveConn runs one connection to completion and closes it.
func (s *NBDServer) serveConn(ctx context.Context, conn net.Conn, id uint64) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopClose := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stopClose()
	defer func() { _ = conn.Close() }()

	c := &nbdConn{
		s:     s,
		ctx:   ctx,
		conn:  conn,
		r:     bufio.NewReaderSize(conn, nbdReadBufferSize),
		log:   s.log.With("conn", id),
		slots: make(chan struct{}, nbdMaxInFlight),
		mib:   make(chan struct{}, nbdInFlightMiB),
	}
	c.log.Debug("nbd connection opened", "remote", conn.RemoteAddr())

	transmit, err := c.negotiate()
	if err != nil {
		c.logEnd("nbd negotiation failed", err)
		return
	}
	if !transmit {
		c.log.Debug("nbd client ended negotiation")
		return
	}
	err = c.transmit()
	if err != nil && !nbdIsDisconnect(err) {
		// Drop the connection before waiting: a client breaking the
		// protocol may not be reading the replies of its requests.
		_ = conn.Close()
	}
	c.wg.Wait()
	if err != nil {
		c.logEnd("nbd connection closed", err)
	} else {
		c.log.Debug("nbd client disconnected")
	}
}

// logEnd logs why a connection ended: a peer hanging up or the server
// shutting down is routine, anything else is an error.
func (c *nbdConn) logEnd(msg string, err error) {
	if nbdIsDisconnect(err) || c.ctx.Err() != nil {
		c.log.Debug(msg, "error", err)
		return
	}
	c.log.Error(msg, "error", err)
}

// nbdIsDisconnect reports whether err means the connection went away rather
// than that the client misbehaved.
func nbdIsDisconnect(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// exportOK reports whether name selects this server's export.
func (c *nbdConn) exportOK(name string) bool {
	return name == "" || name == c.s.exportName
}

// negotiate runs the fixed newstyle handshake and option haggling. It returns
// true when the client entered the transmission phase.
func (c *nbdConn) negotiate() (bool, error) {
	var greet [nbdHandshakeGreetingLen]byte
	binary.BigEndian.PutUint64(greet[0:], nbdMagic)
	binary.BigEndian.PutUint64(greet[8:], nbdOptMagic)
	binary.BigEndian.PutUint16(greet[16:], nbdFlagFixedNewstyle|nbdFlagNoZeroes)
	if _, err := c.conn.Write(greet[:]); err != nil {
		return false, fmt.Errorf("write greeting: %w", err)
	}

	var cf [4]byte
	if _, err := io.ReadFull(c.r, cf[:]); err != nil {
		return false, fmt.Errorf("read client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(nbdFlagCFixedNewstyle|nbdFlagCNoZeroes) != 0 {
		return false, fmt.Errorf("%w: unknown client flags %#x", nbdErrProtocol, flags)
	}
	if flags&nbdFlagCFixedNewstyle == 0 {
		return false, fmt.Errorf("%w: client does not support fixed newstyle negotiation", nbdErrProtocol)
	}
	c.noZeroes = flags&nbdFlagCNoZeroes != 0
	c.size = c.s.dev.Size()

	var hdr [nbdOptHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return false, fmt.Errorf("read option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(hdr[0:]); m != nbdOptMagic {
			return false, fmt.Errorf("%w: bad option magic %#x", nbdErrProtocol, m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		n := binary.BigEndian.Uint32(hdr[12:])
		if n > nbdMaxOptionLen {
			return false, fmt.Errorf("%w: option %d length %d exceeds %d", nbdErrProtocol, opt, n, nbdMaxOptionLen)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.r, data); err != nil {
			return false, fmt.Errorf("read option %d data: %w", opt, err)
		}
		done, transmit, err := c.option(opt, data)
		if err != nil || done {
			return transmit, err
		}
	}
}

// option answers one option. done means negotiation is over: transmit says
// whether the transmission phase follows.
func (c *nbdConn) option(opt uint32, data []byte) (done, transmit bool, err error) {
	switch opt {
	case nbdOptExportName:
		// No error reply is possible here: an unknown name ends the session.
		name := string(data)
		if len(name) > nbdMaxStringLen || !c.exportOK(name) {
			return true, false, fmt.Errorf("%w: unknown export name %q", nbdErrProtocol, nbdTruncate(name))
		}
		out := make([]byte, nbdExportNameReplyLen, nbdExportNameReplyLen+nbdZeroPadLen)
		binary.BigEndian.PutUint64(out[0:], uint64(c.size))
		binary.BigEndian.PutUint16(out[8:], nbdTransmissionFlags)
		if !c.noZeroes {
			out = out[:nbdExportNameReplyLen+nbdZeroPadLen]
		}
		if _, err := c.conn.Write(out); err != nil {
			return true, false, fmt.Errorf("write export name reply: %w", err)
		}
		c.log.Debug("nbd client entered transmission", "export", name, "via", "export_name")
		return true, true, nil

	case nbdOptAbort:
		// Best effort: the client may already have closed the connection.
		_ = c.writeOpt(nbdAppendOptReply(nil, opt, nbdRepAck, nil))
		return true, false, nil

	case nbdOptList:
		if len(data) != 0 {
			return false, false, c.optError(opt, nbdRepErrInvalid, "list takes no data")
		}
		entry := binary.BigEndian.AppendUint32(nil, uint32(len(c.s.exportName)))
		entry = append(entry, c.s.exportName...)
		out := nbdAppendOptReply(nil, opt, nbdRepServer, entry)
		out = nbdAppendOptReply(out, opt, nbdRepAck, nil)
		return false, false, c.writeOpt(out)

	case nbdOptInfo, nbdOptGo:
		name, _, ok := nbdParseInfoRequest(data)
		if !ok {
			return false, false, c.optError(opt, nbdRepErrInvalid, "malformed info request")
		}
		if !c.exportOK(name) {
			return false, false, c.optError(opt, nbdRepErrUnknown, "unknown export name")
		}
		// NBD_INFO_EXPORT is mandatory; NBD_INFO_BLOCK_SIZE may be sent
		// unrequested. Other requested info types are optional: skipped.
		var info [2 + 8 + 2]byte
		binary.BigEndian.PutUint16(info[0:], nbdInfoExport)
		binary.BigEndian.PutUint64(info[2:], uint64(c.size))
		binary.BigEndian.PutUint16(info[10:], nbdTransmissionFlags)
		out := nbdAppendOptReply(nil, opt, nbdRepInfo, info[:])
		var bs [2 + 4 + 4 + 4]byte
		binary.BigEndian.PutUint16(bs[0:], nbdInfoBlockSize)
		binary.BigEndian.PutUint32(bs[2:], c.minBlockSize())
		binary.BigEndian.PutUint32(bs[6:], nbdPreferredBlockSize)
		binary.BigEndian.PutUint32(bs[10:], nbdMaxPayload)
		out = nbdAppendOptReply(out, opt, nbdRepInfo, bs[:])
		out = nbdAppendOptReply(out, opt, nbdRepAck, nil)
		if err := c.writeOpt(out); err != nil {
			return true, false, err
		}
		if opt == nbdOptGo {
			c.log.Debug("nbd client entered transmission", "export", name, "via", "go")
			return true, true, nil
		}
		return false, false, nil

	case nbdOptStartTLS:
		return false, false, c.optError(opt, nbdRepErrPolicy, "tls is not offered")

	default:
		// STRUCTURED_REPLY, LIST/SET_META_CONTEXT, EXTENDED_HEADERS,
		// PEEK_EXPORT and anything unknown.
		return false, false, c.optError(opt, nbdRepErrUnsup, "option not supported")
	}
}

// minBlockSize is the advertised minimum block size: 512 when the export size
// allows it (the spec wants the size to be a multiple of it), else 1. The
// server still accepts unaligned requests; the Device takes byte offsets.
func (c *nbdConn) minBlockSize() uint32 {
	if c.size%nbdMinBlockSize == 0 {
		return nbdMinBlockSize
	}
	return 1
}

// nbdParseInfoRequest decodes the data of NBD_OPT_INFO / NBD_OPT_GO:
// u32 name length, name, u16 count, count × u16 info types.
func nbdParseInfoRequest(data []byte) (name string, infos []uint16, ok bool) {
	if len(data) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(data)
	if n > nbdMaxStringLen || uint64(n)+6 > uint64(len(data)) {
		return "", nil, false
	}
	name = string(data[4 : 4+n])
	rest := data[4+n:]
	count := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*count {
		return "", nil, false
	}
	infos = make([]uint16, count)
	for i := range infos {
		infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return name, infos, true
}

// nbdAppendOptReply appends one option reply to b.
func nbdAppendOptReply(b []byte, opt, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, nbdOptReplyMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// optError sends an error reply (with a message for humans) to opt.
func (c *nbdConn) optError(opt, typ uint32, msg string) error {
	c.log.Debug("nbd option refused", "option", opt, "reply", fmt.Sprintf("%#x", typ), "reason", msg)
	return c.writeOpt(nbdAppendOptReply(nil, opt, typ, []byte(msg)))
}

func (c *nbdConn) writeOpt(b []byte) error {
	if _, err := c.conn.Write(b); err != nil {
		return fmt.Errorf("write option reply: %w", err)
	}
	return nil
}

// nbdTruncate shortens a client-supplied string for logging.
func nbdTruncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// transmit runs the transmission phase read loop. It returns nil on
// NBD_CMD_DISC; on return no new request is started, but requests already
// dispatched may still be running (serveConn waits for them).
func (c *nbdConn) transmit() error {
	var h [nbdRequestHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.r, h[:]); err != nil {
			return fmt.Errorf("read request: %w", err)
		}
		if m := binary.BigEndian.Uint32(h[0:]); m != nbdRequestMagic {
			return fmt.Errorf("%w: bad request magic %#x", nbdErrProtocol, m)
		}
		req := nbdRequest{
			flags:  binary.BigEndian.Uint16(h[4:]),
			typ:    binary.BigEndian.Uint16(h[6:]),
			cookie: binary.BigEndian.Uint64(h[8:]),
			off:    binary.BigEndian.Uint64(h[16:]),
			length: binary.BigEndian.Uint32(h[24:]),
		}
		if req.typ == nbdCmdDisc {
			return nil
		}
		if req.typ == nbdCmdWrite && req.length > nbdMaxPayload {
			// Skipping up to 4 GiB of payload is not worth it.
			return fmt.Errorf("%w: write of %d bytes exceeds %d", nbdErrProtocol, req.length, nbdMaxPayload)
		}

		if errno := c.check(req); errno != 0 {
			if req.typ == nbdCmdWrite {
				if _, err := io.CopyN(io.Discard, c.r, int64(req.length)); err != nil {
					return fmt.Errorf("read write payload: %w", err)
				}
			}
			c.log.Debug("nbd request rejected", "cmd", nbdCmdName(req.typ), "flags", req.flags,
				"offset", req.off, "length", req.length, "errno", errno)
			c.reply(req.cookie, errno, nil)
			continue
		}

		// Zero-length requests touch nothing: answer them here.
		if req.length == 0 && req.typ != nbdCmdFlush {
			c.reply(req.cookie, 0, nil)
			continue
		}

		tokens := 0
		if req.typ == nbdCmdRead || req.typ == nbdCmdWrite {
			tokens = int((req.length + nbdMiB - 1) / nbdMiB)
		}
		if !c.acquire(tokens) {
			return fmt.Errorf("acquire request slot: %w", context.Cause(c.ctx))
		}
		var buf *[]byte
		if req.typ == nbdCmdRead || req.typ == nbdCmdWrite {
			buf = nbdGetBuf(int(req.length))
		}
		if req.typ == nbdCmdWrite {
			if _, err := io.ReadFull(c.r, *buf); err != nil {
				nbdPutBuf(buf)
				c.release(tokens)
				return fmt.Errorf("read write payload: %w", err)
			}
		}
		c.wg.Go(func() {
			defer c.release(tokens)
			c.handle(req, buf)
		})
	}
}

// check validates a request against the export; it returns the errno to
// reply with, or 0. Nothing that fails here reaches the Device.
func (c *nbdConn) check(req nbdRequest) uint32 {
	allowed := nbdCmdFlagFUA // valid on every command once SEND_FUA is advertised
	switch req.typ {
	case nbdCmdRead, nbdCmdWrite, nbdCmdFlush, nbdCmdTrim:
	case nbdCmdWriteZeroes:
		allowed |= nbdCmdFlagNoHole
	default:
		return nbdEINVAL // CACHE, BLOCK_STATUS, ... were not advertised
	}
	if req.flags&^allowed != 0 {
		return nbdEINVAL
	}
	if req.typ == nbdCmdFlush {
		return 0 // offset and length are meaningless
	}
	if req.typ == nbdCmdRead && req.length > nbdMaxPayload {
		return nbdEINVAL
	}
	size := uint64(c.size)
	if req.off > size || uint64(req.length) > size-req.off {
		// Per the spec: ENOSPC for writes past the end, EINVAL otherwise.
		if req.typ == nbdCmdWrite || req.typ == nbdCmdWriteZeroes {
			return nbdENOSPC
		}
		return nbdEINVAL
	}
	return 0
}

// acquire takes a request slot and tokens MiB of buffer budget, giving up
// when the connection is torn down.
func (c *nbdConn) acquire(tokens int) bool {
	select {
	case c.slots <- struct{}{}:
	case <-c.ctx.Done():
		return false
	}
	for i := range tokens {
		select {
		case c.mib <- struct{}{}:
		case <-c.ctx.Done():
			c.release(i)
			return false
		}
	}
	return true
}

// release returns what acquire(tokens) took.
func (c *nbdConn) release(tokens int) {
	for range tokens {
		<-c.mib
	}
	<-c.slots
}

// handle runs one request against the Device and replies. buf holds a
// WRITE's payload or receives a READ's data; handle returns it to the pool.
func (c *nbdConn) handle(req nbdRequest, buf *[]byte) {
	dev := c.s.dev
	off := int64(req.off) // check bounded off by the export size
	length := int64(req.length)
	fua := req.flags&nbdCmdFlagFUA != 0
	var err error
	switch req.typ {
	case nbdCmdRead:
		// FUA on a read has no meaning for this device: ignored.
		if err = dev.ReadAt(c.ctx, *buf, off); err == nil {
			c.reply(req.cookie, 0, *buf)
			nbdPutBuf(buf)
			return
		}
		nbdPutBuf(buf)
	case nbdCmdWrite:
		err = dev.WriteAt(c.ctx, *buf, off, fua)
		nbdPutBuf(buf)
	case nbdCmdFlush:
		err = dev.Flush(c.ctx)
	case nbdCmdTrim:
		err = c.trim(off, length, fua)
	case nbdCmdWriteZeroes:
		if req.flags&nbdCmdFlagNoHole == 0 {
			// Trim punches holes that read back as zeroes.
			err = c.trim(off, length, fua)
		} else {
			err = c.writeZeroes(off, length, fua)
		}
	}
	if err != nil {
		errno := nbdErrno(err)
		switch {
		case c.ctx.Err() != nil:
			c.log.Debug("nbd request failed during shutdown", "cmd", nbdCmdName(req.typ), "error", err)
		case errno == nbdESHUTDOWN && c.fencedLogged.Swap(true):
			// Every request fails once fenced: log that once per connection.
			c.log.Debug("nbd request failed", "cmd", nbdCmdName(req.typ), "errno", errno, "error", err)
		default:
			c.log.Error("nbd request failed", "cmd", nbdCmdName(req.typ), "offset", off, "length", length,
				"errno", errno, "error", err)
		}
		c.reply(req.cookie, errno, nil)
		return
	}
	c.reply(req.cookie, 0, nil)
}

func (c *nbdConn) trim(off, length int64, fua bool) error {
	if err := c.s.dev.Trim(c.ctx, off, length); err != nil {
		return err
	}
	if fua {
		return c.s.dev.Flush(c.ctx)
	}
	return nil
}

func (c *nbdConn) writeZeroes(off, length int64, fua bool) error {
	zb := nbdGetBuf(int(min(length, nbdZeroChunk)))
	defer nbdPutBuf(zb)
	zeroes := *zb
	clear(zeroes)
	for length > 0 {
		n := min(length, int64(len(zeroes)))
		if err := c.s.dev.WriteAt(c.ctx, zeroes[:n], off, fua); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// nbdCmdName names a command for logs.
func nbdCmdName(typ uint16) string {
	switch typ {
	case nbdCmdRead:
		return "read"
	case nbdCmdWrite:
		return "write"
	case nbdCmdDisc:
		return "disc"
	case nbdCmdFlush:
		return "flush"
	case nbdCmdTrim:
		return "trim"
	case nbdCmdCache:
		return "cache"
	case nbdCmdWriteZeroes:
		return "write_zeroes"
	case nbdCmdBlockStatus:
		return "block_status"
	default:
		return fmt.Sprintf("unknown(%d)", typ)
	}
}

// nbdErrno maps a Device error to the errno sent to the client.
//
// ErrFenced maps to ESHUTDOWN: a fenced engine will never complete I/O
// again, and ESHUTDOWN is the spec's "server is going away" error, which
// obliges the client to disconnect (and so to find the new primary) rather
// than to treat it as a media error and retry here forever.
func nbdErrno(err error) uint32 {
	switch {
	case errors.Is(err, ErrFenced):
		return nbdESHUTDOWN
	case errors.Is(err, ErrNoSpace):
		return nbdENOSPC
	case errors.Is(err, ErrOutOfRange):
		return nbdEINVAL
	default:
		return nbdEIO
	}
}

// reply sends a simple reply; data (a READ's payload) follows the header in
// the same vectored write so that replies never interleave.
func (c *nbdConn) reply(cookie uint64, errno uint32, data []byte) {
	hdr := make([]byte, nbdSimpleReplyHeaderLen)
	binary.BigEndian.PutUint32(hdr[0:], nbdSimpleReplyMagic)
	binary.BigEndian.PutUint32(hdr[4:], errno)
	binary.BigEndian.PutUint64(hdr[8:], cookie)

	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.broken {
		return
	}
	var err error
	if len(data) == 0 {
		_, err = c.conn.Write(hdr)
	} else {
		bufs := net.Buffers{hdr, data}
		_, err = bufs.WriteTo(c.conn)
	}
	if err != nil {
		// The stream is now out of sync: drop the connection, which also
		// stops the read loop.
		c.broken = true
		_ = c.conn.Close()
		c.logEnd("nbd reply failed", err)
	}
}

// Buffer pools, one per power-of-two size class from 4 KiB to nbdMaxPayload,
// so that a 4 KiB read does not pin a 32 MiB buffer.
const (
	nbdPoolMinShift = 12
	nbdPoolClasses  = 25 - nbdPoolMinShift + 1 // 4 KiB .. 32 MiB
)

var nbdBufPools [nbdPoolClasses]sync.Pool

// nbdGetBuf returns a buffer of length n (0 < n <= nbdMaxPayload) with stale
// contents.
func nbdGetBuf(n int) *[]byte {
	class := max(bits.Len(uint(n-1))-nbdPoolMinShift, 0)
	if v := nbdBufPools[class].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(class+nbdPoolMinShift))
	return &b
}

func nbdPutBuf(b *[]byte) {
	class := bits.TrailingZeros(uint(cap(*b))) - nbdPoolMinShift
	if class < 0 || class >= nbdPoolClasses || cap(*b) != 1<<(class+nbdPoolMinShift) {
		return
	}
	nbdBufPools[class].Put(b)
}
