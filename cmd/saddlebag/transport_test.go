package main

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/internal/statusapi"
	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/replication"
)

type fixedStatus replication.EngineStatus

func (f fixedStatus) Status() replication.EngineStatus { return replication.EngineStatus(f) }

// TestStatusEndpointOffLoopbackIsMutualTLS: an engine's status endpoint
// that does not listen on loopback is HTTPS that wants a Connect client
// certificate: a saddlebag-node identity reads it (as `saddlebag status`
// does), an identity intentions deny gets 403 naming it, and a client
// without a certificate gets nothing. (Tests listen on loopback only, so
// this serves the non-loopback form on a loopback address.)
func TestStatusEndpointOffLoopbackIsMutualTLS(t *testing.T) {
	dev := testcluster.Dev(t, testcluster.Options{})
	c, err := api.NewClient(&api.Config{Address: dev.HTTPAddr})
	must.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = connecttls.InstallIntentions(ctx, c)
	must.NoError(t, err)
	tr, err := newTransport(ctx, false, c, connecttls.NodeService, hclog.NewNullLogger())
	must.NoError(t, err)
	defer tr.close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	addr := ln.Addr().String()
	sl, authorize := tr.secureStatusListener(ln)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = statusapi.Serve(sctx, sl, fixedStatus{Volume: "v1", Epoch: 7}, authorize, hclog.NewNullLogger())
	}()
	defer func() {
		stop()
		<-done
	}()

	node := connectSource(t, dev.HTTPAddr, connecttls.NodeService)
	cfg := node.ClientConfig(connecttls.NodeService)
	st, err := statusapi.Fetch(ctx, addr, cfg)
	must.NoError(t, err)
	must.Eq(t, "v1", st.Volume)
	must.Eq(t, uint64(7), st.Epoch)

	intruder := connectSource(t, dev.HTTPAddr, "intruder")
	_, err = statusapi.Fetch(ctx, addr, intruder.ClientConfig(connecttls.NodeService))
	must.ErrorContains(t, err, "403")
	must.ErrorContains(t, err, "/svc/intruder may not reach saddlebag-node")

	_, err = statusapi.Fetch(ctx, addr, &tls.Config{InsecureSkipVerify: true})
	must.ErrorContains(t, err, "certificate required")
	_, err = statusapi.Fetch(ctx, addr, nil)
	must.Error(t, err)
}

// TestSecureIsTheDefault: without --insecure a process needs its Connect
// certificate, and without a Consul agent to get it from it does not
// start, saying what it needs and that --insecure is the dev-only way out.
func TestSecureIsTheDefault(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	c, err := api.NewClient(&api.Config{Address: addr})
	must.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = newTransport(ctx, false, c, connecttls.NodeService, hclog.NewNullLogger())
	must.ErrorContains(t, err, "needs a local Consul agent with Connect enabled")
	must.ErrorContains(t, err, "--insecure, for a dev setup only")
	tr, err := newTransport(ctx, true, nil, connecttls.NodeService, hclog.NewNullLogger())
	must.NoError(t, err)
	must.Nil(t, tr.replicaDialer())
	must.Nil(t, tr.replicaGuard())
}
