package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/internal/backoff"
	"github.com/saddlebag/saddlebag/replication"
)

// Server serves one Device over the NBD protocol.
type Server struct {
	dev        replication.Device
	exportName string
	log        hclog.Logger
	connIDs    atomic.Uint64
}

// NewServer returns a server exporting dev under exportName; the default
// export name "" is accepted as well. A nil log discards messages.
func NewServer(dev replication.Device, exportName string, log hclog.Logger) *Server {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Server{dev: dev, exportName: exportName, log: log}
}

// Serve accepts connections on ln until ctx is done or ln is closed, and
// handles each connection in its own goroutine. When it stops accepting it
// closes ln and every open connection, then returns once all connection
// goroutines have exited. It returns nil when stopped by ctx or by ln being
// closed, otherwise the error Accept failed with.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
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
	s    *Server
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
func (s *Server) serveConn(ctx context.Context, conn net.Conn, id uint64) {
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
