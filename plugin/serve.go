package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/plugin/internal/rpc"
)

// EndpointEnv is the environment variable Nomad sets to the socket a CSI
// plugin task must serve on (raw_exec passes it as unix:///path).
const EndpointEnv = "CSI_ENDPOINT"

// SocketPath returns the unix socket path of a CSI endpoint given as
// unix:///path, unix:/path, unix://path or a plain absolute path.
func SocketPath(endpoint string) (string, error) {
	p := endpoint
	switch {
	case strings.HasPrefix(p, "unix://"):
		p = strings.TrimPrefix(p, "unix://")
	case strings.HasPrefix(p, "unix:"):
		p = strings.TrimPrefix(p, "unix:")
	case strings.Contains(p, "://"):
		return "", fmt.Errorf("csi endpoint %q: only unix sockets are served", endpoint)
	}
	if p == "" || !filepath.IsAbs(p) {
		return "", fmt.Errorf("csi endpoint %q: want unix:///absolute/path", endpoint)
	}
	return filepath.Clean(p), nil
}

// Serve serves the CSI services register adds on the unix socket of
// endpoint until ctx ends, then stops gracefully. A stale socket file is
// replaced.
func Serve(ctx context.Context, endpoint string, log hclog.Logger, register func(*grpc.Server)) error {
	path, err := SocketPath(endpoint)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("csi socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale csi socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("csi listen: %w", err)
	}
	defer os.Remove(path)
	log = log.Named("csi")
	log.Info("serving csi", "endpoint", "unix://"+path)
	return serveOn(ctx, ln, log, register)
}

// ServeForward serves the services register adds on ln, a TCP listener,
// until ctx ends: the channel standbys forward mutating Controller calls
// on (ForwardedKey). Calls are logged like on the CSI socket, secrets
// stripped. opts secure it (mutual TLS and an authorizing interceptor,
// which runs after the logging one, so refused calls are logged too);
// without them it is plain gRPC.
func ServeForward(ctx context.Context, ln net.Listener, log hclog.Logger, register func(*grpc.Server), opts ...grpc.ServerOption) error {
	log = log.Named("forward")
	log.Info("serving forwarded controller calls", "addr", ln.Addr().String(), "tls", len(opts) > 0)
	return serveOn(ctx, ln, log, register, opts...)
}

func serveOn(ctx context.Context, ln net.Listener, log hclog.Logger, register func(*grpc.Server), opts ...grpc.ServerOption) error {
	srv := grpc.NewServer(append([]grpc.ServerOption{grpc.UnaryInterceptor(LoggingInterceptor(log)),
		grpc.ChainUnaryInterceptor(metricsInterceptor)}, opts...)...)
	register(srv)
	stop := context.AfterFunc(ctx, srv.GracefulStop)
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("grpc serve %s: %w", ln.Addr(), err)
	}
	return nil
}

// LoggingInterceptor logs every CSI call (method, request with every
// secret stripped, duration, status code) and turns any error that
// is not a gRPC status into Internal, so nothing reaches the caller as
// Unknown.
func LoggingInterceptor(log hclog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				err = rpc.ToStatus(err, info.FullMethod)
			}
		}
		code := status.Code(err)
		args := []any{"method", info.FullMethod, "request", StripSecrets(req), "duration", time.Since(start), "code", code.String()}
		if err != nil {
			log.Info("csi call failed", append(args, "error", err)...)
		} else {
			log.Debug("csi call", args...)
		}
		return resp, err
	}
}

// StripSecrets returns a request as a string fit for a log: every field
// the CSI spec marks csi_secret (the secrets maps, at any depth) replaced
// by "***stripped***", by csi-lib-utils' protosanitizer, which follows
// the spec's field option rather than a field name.
func StripSecrets(req any) string { return protosanitizer.StripSecrets(req).String() }
