package replication

import (
	"context"
	"net"
	"time"
)

// Transport security is handed in, like epochs: this package knows
// nothing of Consul. cmd/saddlebag wires internal/connecttls (mutual TLS
// with Consul Connect certificates, intentions) to a Dialer on the
// primary's side and a replica.Guard on the replica server's; nil for
// both is plain TCP, which only an explicit --insecure (or a test) asks
// for.

// Dialer opens a connection to the replica server at addr within
// timeout: for mutual TLS, the TCP connection with its handshake done.
// nil dials plain TCP.
type Dialer func(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error)

func (d Dialer) dial(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	if d != nil {
		return d(ctx, addr, timeout)
	}
	nd := net.Dialer{Timeout: timeout, KeepAlive: 5 * time.Second}
	return nd.DialContext(ctx, "tcp", addr)
}
