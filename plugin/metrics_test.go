package plugin

import (
	"context"
	"testing"

	"github.com/shoenig/test/must"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/saddlebag/saddlebag/internal/telemetry"
)

// A call a standby forwards passes the interceptor twice (the standby's
// CSI socket, the active controller's forward channel): it is counted
// once.
func TestForwardedCallCountedOnce(t *testing.T) {
	tel, err := telemetry.New()
	must.NoError(t, err)
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Controller/TestForwardedCallCountedOnce"}
	ok := func(context.Context, any) (any, error) { return nil, nil }
	_, err = metricsInterceptor(context.Background(), nil, info, ok)
	must.NoError(t, err)
	fwd := metadata.NewIncomingContext(context.Background(), metadata.Pairs(ForwardedKey, "standby-1"))
	_, err = metricsInterceptor(fwd, nil, info, ok)
	must.NoError(t, err)

	fams, err := tel.Gatherer().Gather()
	must.NoError(t, err)
	var calls float64
	for _, f := range fams {
		if f.GetName() != telemetry.CSICalls {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "method" && l.GetValue() == "TestForwardedCallCountedOnce" {
					calls += m.GetCounter().GetValue()
				}
			}
		}
	}
	must.Eq(t, 1.0, calls)
}
