package plugin

import (
	"context"
	"errors"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin/internal/rpc"
)

// ForwardedKey is the gRPC metadata key a standby sets on a mutating call
// it forwards to the active controller; its value is the standby's name.
// A controller serves a marked call only while it is active: a standby
// refuses it with Unavailable and never forwards it again, so a call in
// flight while the leadership moves cannot loop between instances.
//
// Why forward at all: Nomad sends controller RPCs to the plugin's
// instances in client-ID order and moves on only on its own retryable
// client errors, never on an Unavailable from the plugin, so a standby
// that refused would fail every call it is sent.
const ForwardedKey = "x-saddlebag-forwarded-by"

// forwardedBy returns who forwarded the incoming call ("" if nobody).
func forwardedBy(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(ForwardedKey); len(v) > 0 {
		if v[0] == "" {
			return "?"
		}
		return v[0]
	}
	return ""
}

// forwarder holds the connection to the active controller's forward
// address, resolved from the leadership lock at every call and kept while
// the lock names the same address.
//
// Contract: safe for concurrent use; close ends the cached connection
// (calls in flight on it fail).
type forwarder struct {
	client *leader.Client
	log    hclog.Logger
	creds  credentials.TransportCredentials // mutual TLS; insecure for --insecure and tests

	mu   sync.Mutex
	addr string
	conn *grpc.ClientConn
}

// target reads the lock and returns a client for the active controller
// (on the kept connection when its address is the same) and its address.
// With no active controller, or one that publishes no address, it is
// Unavailable.
func (f *forwarder) target(ctx context.Context, self leader.LeaderRecord) (csi.ControllerClient, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	active, err := f.client.ReadLeader(ctx)
	switch {
	case errors.Is(err, leader.ErrNotFound):
		return nil, "", rpc.Errf(codes.Unavailable, "this controller is a standby and no controller holds the leadership lock (none running, or one taking over after lock-delay): retry")
	case err != nil:
		return nil, "", rpc.Errf(codes.Unavailable, "this controller is a standby and cannot find the active one: %v", err)
	case active.ForwardAddr == "":
		return nil, "", rpc.Errf(codes.Unavailable, "this controller is a standby and the active controller %s publishes no forward address", active.Node)
	case active.Node == self.Node && active.ForwardAddr == self.ForwardAddr:
		return nil, "", rpc.Errf(codes.Unavailable, "this controller is taking over the leadership lock: retry")
	}
	if f.conn != nil && f.addr == active.ForwardAddr {
		return csi.NewControllerClient(f.conn), f.addr, nil
	}
	conn, err := grpc.NewClient("passthrough:///"+active.ForwardAddr, grpc.WithTransportCredentials(f.creds))
	if err != nil {
		return nil, "", rpc.Errf(codes.Unavailable, "dial the active controller %s at %s: %v", active.Node, active.ForwardAddr, err)
	}
	if f.conn != nil {
		_ = f.conn.Close()
	}
	f.log.Info("forwarding mutating calls to the active controller", "active", active.Node, "addr", active.ForwardAddr, "epoch", active.Epoch)
	f.conn, f.addr = conn, active.ForwardAddr
	return csi.NewControllerClient(conn), f.addr, nil
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil {
		_ = f.conn.Close()
		f.conn, f.addr = nil, ""
	}
}

// forward sends a mutating call this standby received to the active
// controller and returns its response or status verbatim, under the
// caller's deadline (ctx carries it). The call is marked with ForwardedKey;
// a call that arrived marked is refused instead. When a call fails with
// Unavailable the lock is read again, and the call is retried once if the
// leadership moved to another address. Only the method and the target are
// logged, never the request (it may carry secrets).
func forward[Req, Resp any](ctx context.Context, c *Controller, method string, req Req,
	call func(csi.ControllerClient, context.Context, Req, ...grpc.CallOption) (Resp, error)) (Resp, error) {
	var zero Resp
	if by := forwardedBy(ctx); by != "" {
		return zero, rpc.Errf(codes.Unavailable, "this controller is a standby and %s already forwarded this call here: the leadership moved meanwhile; retry", by)
	}
	out := metadata.AppendToOutgoingContext(ctx, ForwardedKey, c.cfg.Agent.Node())
	self := leader.LeaderRecord{Node: c.cfg.Agent.Node(), ForwardAddr: c.cfg.ForwardAddr}
	// The lock is read for every call (the connection to an address it
	// still names is reused): a cached connection to an active
	// controller that has since been cut off would take the call and
	// answer nothing until the caller's deadline, and Nomad's volume
	// watcher waits minutes on it (issue 12).
	client, addr, err := c.fwd.target(ctx, self)
	if err != nil {
		return zero, err
	}
	c.log.Debug("forwarding call to the active controller", "method", method, "addr", addr)
	resp, err := call(client, out, req)
	if status.Code(err) != codes.Unavailable {
		return resp, err
	}
	// The active controller's own Unavailable, or it is gone: read the
	// lock again and retry once only if the leadership moved elsewhere.
	next, nextAddr, rerr := c.fwd.target(ctx, self)
	switch {
	case rerr != nil:
		return zero, rerr // the active controller is gone: say so
	case nextAddr == addr:
		return zero, err
	}
	c.log.Info("leadership moved: forwarding the call to the new active controller", "method", method, "addr", nextAddr)
	return call(next, out, req)
}
