package nbd

// The transmission phase: the read loop that decodes requests, their
// checks and budget, running each against the Device, and the replies.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"sync"

	"github.com/saddlebag/saddlebag/replication"
)

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
	case errors.Is(err, replication.ErrFenced):
		return nbdESHUTDOWN
	case errors.Is(err, replication.ErrNoSpace):
		return nbdENOSPC
	case errors.Is(err, replication.ErrOutOfRange):
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
