package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// Transport security is handed in: this package knows nothing of Consul.
// cmd/saddlebag wires internal/connecttls (mutual TLS with Consul Connect
// certificates, intentions) to a Guard on the replica server; nil is plain
// TCP, which only an explicit --insecure (or a test) asks for.

// Guard admits a replica server's connections before any frame is read:
// it returns the connection to serve (say, the TLS connection after its
// handshake) and the peer's identity, for logs. An error refuses the
// connection: one wrapping wire.ErrPermissionDenied (a peer authenticated but
// not authorized) is answered on the wire, to the peer's first request,
// with wire.StatusDenied and the error's text before the connection is closed;
// any other (a failed handshake) just closes it. No frame of a refused
// connection is ever applied.
type Guard func(ctx context.Context, c net.Conn) (net.Conn, string, error)

// admitTimeout bounds a Guard's work and the wait for a denied peer's
// first request.
const admitTimeout = 10 * time.Second

// WithGuard makes s admit every connection through g.
func (s *Server) WithGuard(g Guard) *Server {
	s.guard = g
	return s
}

// admit runs the guard on c. It returns the connection to serve and the
// peer's identity, or ok false when c was refused (and is to be closed).
func (s *Server) admit(ctx context.Context, c net.Conn) (net.Conn, string, bool) {
	if s.guard == nil {
		return c, "", true
	}
	actx, cancel := context.WithTimeout(ctx, admitTimeout)
	defer cancel()
	sc, peer, err := s.guard(actx, c)
	if err == nil {
		return sc, peer, true
	}
	s.Stats.Refused.Add(1)
	log := s.log.With("peer", c.RemoteAddr().String())
	if peer != "" {
		log = log.With("identity", peer)
	}
	if !errors.Is(err, wire.ErrPermissionDenied) || sc == nil {
		log.Warn("refused connection: authentication failed", "error", err)
		return nil, peer, false
	}
	log.Warn("refused connection: peer not authorized", "error", err)
	// Answer the first request with the refusal, so the peer learns why.
	sc.SetDeadline(time.Now().Add(admitTimeout))
	var f wire.Frame
	if rerr := wire.ReadFrameInto(sc, &f, func(_ *wire.Frame, n int) []byte { return make([]byte, n) }); rerr != nil {
		return nil, peer, false
	}
	reply := wire.Frame{Type: f.Type | wire.ReplyBit, Epoch: f.Epoch, ID: f.ID, Status: wire.StatusDenied,
		Payload: []byte(fmt.Sprintf("replica server %s: %v", c.LocalAddr(), err))}
	var h [wire.HeaderSize]byte
	wire.PutHeader(h[:], &reply, wire.PayloadSum(reply.Payload))
	bufs := net.Buffers{h[:], reply.Payload}
	_, _ = bufs.WriteTo(sc)
	// Read what the peer sent after its first request (a client sends its
	// promise right behind its open) before closing: a close with unread
	// data resets the connection, and the peer may then see the reset
	// (a broken pipe on its next send) instead of the refusal. Bounded in
	// time and bytes.
	if cw, ok := sc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	sc.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(sc, 1<<20))
	sc.Close()
	return nil, peer, false
}
