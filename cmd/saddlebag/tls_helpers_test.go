package main

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/replication"
)

// connectSource fetches a Connect certificate for service from the Consul
// agent at consulAddr, as a Saddlebag process would.
func connectSource(t *testing.T, consulAddr, service string) *connecttls.Source {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: consulAddr})
	must.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	src, err := connecttls.NewSource(ctx, c, service, nil)
	must.NoError(t, err)
	t.Cleanup(src.Close)
	return src
}

// secureDialer is the replica Dialer of a process whose identity is
// service, with its certificate from the Consul agent at consulAddr.
func secureDialer(t *testing.T, consulAddr, service string) replication.Dialer {
	src := connectSource(t, consulAddr, service)
	return func(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
		return src.Dial(ctx, addr, connecttls.NodeService, timeout)
	}
}
