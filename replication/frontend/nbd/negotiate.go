package nbd

// The handshake: fixed newstyle negotiation and option haggling, up to the
// transmission phase.

import (
	"encoding/binary"
	"fmt"
	"io"
)

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
