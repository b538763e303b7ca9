package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/replica"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// Every connection between Saddlebag processes is mutual TLS with Consul
// Connect certificates (internal/connecttls), authorized by Consul
// intentions; --insecure is the only way to run without.

// addInsecureFlag adds --insecure.
func addInsecureFlag(fs *flag.FlagSet, insecure *bool) {
	fs.BoolVar(insecure, "insecure", false, "DEV ONLY: no TLS and no authorization on replica, forwarding and status connections "+
		"(anyone who reaches the port can read, write, delete and fence volumes); without it every connection is mutual TLS "+
		"with Consul Connect certificates, authorized by intentions")
}

// certWait bounds how long a process waits at start for its first
// certificate from the local Consul agent.
const certWait = 2 * time.Minute

// transport is a process's transport security: a Connect certificate
// source, or nothing with --insecure.
type transport struct {
	src *connecttls.Source // nil: --insecure
	api *api.Client
	log hclog.Logger
}

// newTransport fetches the certificate of service from the Consul agent
// c talks to, or with insecure logs loudly that there is none.
func newTransport(ctx context.Context, insecure bool, c *api.Client, service string, log hclog.Logger) (*transport, error) {
	t := &transport{api: c, log: log}
	if insecure {
		log.Warn("!!! INSECURE MODE (--insecure, dev only): replica, forwarding and status connections are plain TCP " +
			"without authentication or authorization; anyone who reaches them can read, overwrite, delete and fence volumes !!!")
		return t, nil
	}
	wctx, cancel := context.WithTimeout(ctx, certWait)
	defer cancel()
	src, err := connecttls.NewSource(wctx, c, service, log)
	if err != nil {
		return nil, fmt.Errorf("%w; Saddlebag needs a local Consul agent with Connect enabled for its certificates "+
			"(or --insecure, for a dev setup only)", err)
	}
	t.src = src
	return t, nil
}

// dialTransport is newTransport for a command that talks to Consul only
// for its certificates.
func dialTransport(ctx context.Context, insecure bool, cfg leader.ConsulConfig, service string, log hclog.Logger) (*transport, error) {
	if insecure {
		return newTransport(ctx, true, nil, service, log)
	}
	c, err := leader.NewClient(cfg, log)
	if err != nil {
		return nil, err
	}
	return newTransport(ctx, false, c.API(), service, log)
}

func (t *transport) close() {
	if t.src != nil {
		t.src.Close()
	}
}

// replicaDialer connects to replica servers (saddlebag-node).
func (t *transport) replicaDialer() replication.Dialer {
	if t.src == nil {
		return nil
	}
	return func(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
		return t.src.Dial(ctx, addr, connecttls.NodeService, timeout)
	}
}

// replicaGuard admits a replica server's connections: a TLS handshake
// with a client certificate Consul's CA signed, then intentions decide
// whether its identity may reach saddlebag-node.
func (t *transport) replicaGuard() replica.Guard {
	if t.src == nil {
		return nil
	}
	az := &connecttls.Authorizer{Source: t.src, API: t.api, Target: connecttls.NodeService}
	cfg := t.src.ServerConfig()
	return func(ctx context.Context, c net.Conn) (net.Conn, string, error) {
		tc := tls.Server(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, "", fmt.Errorf("tls handshake: %w", err)
		}
		id, err := az.Authorize(ctx, tc.ConnectionState())
		if errors.Is(err, connecttls.ErrDenied) {
			return tc, id.URI, fmt.Errorf("%w: %w", wire.ErrPermissionDenied, err)
		}
		return tc, id.URI, err
	}
}

// grpcServerOptions secures a TCP gRPC server that only target's
// allowed sources may call (the controllers' forwarding channel).
func (t *transport) grpcServerOptions(target string) []grpc.ServerOption {
	if t.src == nil {
		return nil
	}
	az := &connecttls.Authorizer{Source: t.src, API: t.api, Target: target}
	check := func(ctx context.Context) error {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return status.Error(codes.Unauthenticated, "no peer")
		}
		info, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok {
			return status.Error(codes.Unauthenticated, "not a TLS connection")
		}
		id, err := az.Authorize(ctx, info.State)
		switch {
		case errors.Is(err, connecttls.ErrDenied):
			t.log.Warn("refused call: peer not authorized", "peer", p.Addr.String(), "identity", id.URI, "error", err)
			return status.Error(codes.PermissionDenied, err.Error())
		case errors.Is(err, connecttls.ErrUntrusted):
			t.log.Warn("refused call: peer not authenticated", "peer", p.Addr.String(), "error", err)
			return status.Error(codes.Unauthenticated, err.Error())
		case err != nil:
			return status.Error(codes.Unavailable, err.Error())
		}
		return nil
	}
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(t.src.ServerConfig())),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := check(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := check(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}

// grpcCredentials are a gRPC client's transport credentials for target.
func (t *transport) grpcCredentials(target string) credentials.TransportCredentials {
	if t.src == nil {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(t.src.ClientConfig(target))
}

// statusListener secures an engine's status endpoint: on loopback it
// stays plain HTTP (only this host reaches it); elsewhere, unless
// --insecure, it is HTTPS with a Connect client certificate required and
// intentions to saddlebag-node deciding who may read it.
func (t *transport) statusListener(ln net.Listener) (net.Listener, func(*http.Request) error) {
	if t.src == nil || isLoopback(ln.Addr().String()) {
		return ln, nil
	}
	return t.secureStatusListener(ln)
}

// secureStatusListener is statusListener's HTTPS with client
// certificates and intentions, on any address.
func (t *transport) secureStatusListener(ln net.Listener) (net.Listener, func(*http.Request) error) {
	az := &connecttls.Authorizer{Source: t.src, API: t.api, Target: connecttls.NodeService}
	return tls.NewListener(ln, t.src.ServerConfig()), func(r *http.Request) error {
		if r.TLS == nil {
			return errors.New("not a TLS connection")
		}
		id, err := az.Authorize(r.Context(), *r.TLS)
		if err != nil {
			t.log.Warn("refused status request", "peer", r.RemoteAddr, "identity", id.URI, "error", err)
		}
		return err
	}
}

// statusClientTLS is `saddlebag status`'s TLS config for addr: nil for a
// loopback address (served plain), else a saddlebag-node certificate.
func (t *transport) statusClientTLS(addr string) *tls.Config {
	if t.src == nil || isLoopback(addr) {
		return nil
	}
	cfg := t.src.ClientConfig(connecttls.NodeService)
	cfg.NextProtos = []string{"h2", "http/1.1"}
	return cfg
}

// isLoopback reports whether a listen address is on loopback only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
