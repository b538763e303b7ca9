package plugin

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/internal/telemetry"
	"github.com/saddlebag/saddlebag/plugin/internal/rpc"
)

// metricsInterceptor counts every CSI call by service, method and the
// status code the caller gets (an error that is not a gRPC status is
// counted as the code LoggingInterceptor turns it into), with its
// duration. It runs inside LoggingInterceptor. A call a standby forwarded
// is counted by the standby, which Nomad called, and not again by the
// active controller that served it: summed over the instances, each of
// Nomad's calls counts once.
func metricsInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if forwardedBy(ctx) != "" {
		return handler(ctx, req)
	}
	start := time.Now()
	resp, err := handler(ctx, req)
	code := status.Code(rpc.ToStatus(err, info.FullMethod))
	telemetry.CSICall(info.FullMethod, code.String(), time.Since(start))
	return resp, err
}
