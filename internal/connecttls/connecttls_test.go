package connecttls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/testcluster"
)

func devConsul(t *testing.T) *api.Client {
	t.Helper()
	a := testcluster.Dev(t, testcluster.Options{})
	c, err := api.NewClient(&api.Config{Address: a.HTTPAddr})
	must.NoError(t, err)
	return c
}

func testLog(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: tWriter{t}})
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func newSource(t *testing.T, c *api.Client, service string) *Source {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := NewSource(ctx, c, service, testLog(t))
	must.NoError(t, err)
	t.Cleanup(s.Close)
	return s
}

// echoServer accepts TLS connections, authorizes each with az, writes
// "ok\n" or the refusal, then echoes lines back.
func echoServer(t *testing.T, src *Source, az *Authorizer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer raw.Close()
				c := tls.Server(raw, src.ServerConfig())
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := c.HandshakeContext(ctx); err != nil {
					return
				}
				if _, err := az.Authorize(ctx, c.ConnectionState()); err != nil {
					io.WriteString(c, "refused: "+err.Error()+"\n")
					return
				}
				io.WriteString(c, "ok\n")
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func readLine(t *testing.T, c net.Conn) (string, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			return string(b), err
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
}

// TestMutualTLSAndIntentions: a saddlebag-node leaf from the dev agent
// reaches a saddlebag-node server; a client with no certificate or a
// forged one fails the handshake; a Consul-signed identity that the
// installed intentions do not allow is refused by the authorizer, and a
// changed intention applies to the next connection.
func TestMutualTLSAndIntentions(t *testing.T) {
	c := devConsul(t)
	ctx := context.Background()
	changes, err := InstallIntentions(ctx, c)
	must.NoError(t, err)
	must.Len(t, 5, changes)
	again, err := InstallIntentions(ctx, c)
	must.NoError(t, err)
	must.Len(t, 0, again)

	node := newSource(t, c, NodeService)
	ctl := newSource(t, c, ControllerService)
	intruder := newSource(t, c, "intruder")
	must.StrContains(t, node.Leaf().URIs[0].String(), "/svc/saddlebag-node")
	addr := echoServer(t, node, &Authorizer{Source: node, API: c, Target: NodeService})

	for _, s := range []*Source{node, ctl} {
		conn, err := s.Dial(ctx, addr, NodeService, 5*time.Second)
		must.NoError(t, err)
		line, err := readLine(t, conn)
		must.NoError(t, err)
		must.Eq(t, "ok", line)
		conn.Close()
	}

	conn, err := intruder.Dial(ctx, addr, NodeService, 5*time.Second)
	must.NoError(t, err)
	line, _ := readLine(t, conn)
	must.StrContains(t, line, "refused: denied by consul intentions: spiffe://")
	must.StrContains(t, line, "/svc/intruder may not reach saddlebag-node")
	conn.Close()

	// A client that expects another service refuses the server.
	_, err = ctl.Dial(ctx, addr, ControllerService, 5*time.Second)
	must.ErrorContains(t, err, "want service saddlebag-controller")

	// No certificate, and a forged one with this cluster's trust domain.
	forged, err := ForgeLeaf(node.TrustDomain(), NodeService)
	must.NoError(t, err)
	for name, cfg := range map[string]*tls.Config{
		"none":   {InsecureSkipVerify: true},
		"forged": {InsecureSkipVerify: true, Certificates: []tls.Certificate{forged}},
	} {
		raw, err := tls.Dial("tcp", addr, cfg)
		if err == nil {
			// TLS 1.3: the server's verdict on the client certificate
			// arrives after the client's side of the handshake.
			_, err = readLine(t, raw)
			raw.Close()
		}
		must.Error(t, err, must.Sprintf("client with %s certificate", name))
	}

	// Allow the intruder, and the next connection is admitted.
	entry, _, err := c.ConfigEntries().Get(api.ServiceIntentions, NodeService, nil)
	must.NoError(t, err)
	e := entry.(*api.ServiceIntentionsConfigEntry)
	e.Sources = append(e.Sources, &api.SourceIntention{Name: "intruder", Action: api.IntentionActionAllow, Type: api.IntentionSourceConsul})
	_, _, err = c.ConfigEntries().Set(e, nil)
	must.NoError(t, err)
	admitted := false
	for i := 0; i < 50 && !admitted; i++ {
		conn, err := intruder.Dial(ctx, addr, NodeService, 5*time.Second)
		must.NoError(t, err)
		line, _ := readLine(t, conn)
		conn.Close()
		admitted = line == "ok"
		if !admitted {
			time.Sleep(200 * time.Millisecond)
		}
	}
	must.True(t, admitted, must.Sprint("an allowing intention did not take effect within 10s"))
}

// TestRootRotation: a new built-in CA key makes Consul publish a new
// root and re-sign the leaves; the source picks both up, a connection
// made before keeps working, and new handshakes verify.
func TestRootRotation(t *testing.T) {
	c := devConsul(t)
	ctx := context.Background()
	node := newSource(t, c, NodeService)
	ctl := newSource(t, c, ControllerService)
	addr := echoServer(t, node, &Authorizer{Source: node, API: c, Target: NodeService})
	old, err := ctl.Dial(ctx, addr, NodeService, 5*time.Second)
	must.NoError(t, err)
	defer old.Close()
	line, err := readLine(t, old)
	must.NoError(t, err)
	must.Eq(t, "ok", line)

	oldRoots, oldLeaf := node.RootIDs(), node.Leaf()
	changed := node.Changed()
	RotateRootForTest(t, c)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && (slices.Equal(node.RootIDs(), oldRoots) || node.Leaf().Equal(oldLeaf) || ctl.Leaf().Equal(oldLeaf)) {
		select {
		case <-changed:
			changed = node.Changed()
		case <-time.After(time.Second):
		}
	}
	must.NotEq(t, oldRoots, node.RootIDs())
	must.False(t, node.Leaf().Equal(oldLeaf), must.Sprint("leaf not renewed after the root rotation"))

	// The old connection still works.
	_, err = io.WriteString(old, "still here\n")
	must.NoError(t, err)
	line, err = readLine(t, old)
	must.NoError(t, err)
	must.Eq(t, "still here", line)
	// And new handshakes verify with the new certificates.
	conn, err := ctl.Dial(ctx, addr, NodeService, 5*time.Second)
	must.NoError(t, err)
	line, err = readLine(t, conn)
	must.NoError(t, err)
	must.Eq(t, "ok", line)
	conn.Close()
}

// RotateRootForTest gives Consul's built-in CA a new private key, which
// makes it generate and publish a new root.
func RotateRootForTest(t *testing.T, c *api.Client) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must.NoError(t, err)
	der, err := x509.MarshalECPrivateKey(key)
	must.NoError(t, err)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	_, err = c.Connect().CASetConfig(&api.CAConfig{Provider: "consul", Config: map[string]any{"PrivateKey": string(keyPEM)}}, nil)
	must.NoError(t, err)
}

// TestLeafFromClientAgent: in a cluster of a server and a client agent
// (the e2e layout, not -dev), the client agent hands out leaves and roots,
// and a server on one identity verifies a client on another.
func TestLeafFromClientAgent(t *testing.T) {
	cl := testcluster.NewCluster(t, 1, testcluster.Options{})
	c, err := api.NewClient(&api.Config{Address: cl.Clients[0].HTTPAddr})
	must.NoError(t, err)
	node := newSource(t, c, NodeService)
	ctl := newSource(t, c, ControllerService)
	addr := echoServer(t, node, &Authorizer{Source: node, API: c, Target: NodeService})
	conn, err := ctl.Dial(context.Background(), addr, NodeService, 5*time.Second)
	must.NoError(t, err)
	defer conn.Close()
	line, err := readLine(t, conn)
	must.NoError(t, err)
	must.Eq(t, "ok", line)
}

// TestNewSourceFailsFastWithoutPermission: with ACLs on, a token without
// service:write on the service gets no leaf, and NewSource says so at
// once instead of waiting for an agent that will never say yes.
func TestNewSourceFailsFastWithoutPermission(t *testing.T) {
	const mgmt = "5addb1e9-0000-4000-8000-00000000acl1"
	dev := testcluster.Dev(t, testcluster.Options{Token: mgmt, HCL: `acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = "` + mgmt + `"
    agent = "` + mgmt + `"
  }
}`})
	admin, err := api.NewClient(&api.Config{Address: dev.HTTPAddr, Token: mgmt})
	must.NoError(t, err)
	p, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: "other", Rules: `service "other" { policy = "write" }`}, nil)
	must.NoError(t, err)
	tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	must.NoError(t, err)
	c, err := api.NewClient(&api.Config{Address: dev.HTTPAddr, Token: tok.SecretID})
	must.NoError(t, err)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = NewSource(ctx, c, NodeService, testLog(t))
	must.ErrorContains(t, err, "403")
	must.ErrorContains(t, err, "needs service:write on saddlebag-node")
	must.Less(t, 10*time.Second, time.Since(start))
	// Its own service it gets.
	s := newSource(t, c, "other")
	must.StrContains(t, s.Leaf().URIs[0].String(), "/svc/other")
}
