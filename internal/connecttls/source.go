package connecttls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/internal/backoff"
)

// The Consul services whose identities Saddlebag's processes carry.
const (
	NodeService       = "saddlebag-node"
	ControllerService = "saddlebag-controller"
)

// ErrUntrusted means a peer's certificate is missing, not signed by a CA
// root Consul publishes, or carries no service identity of this cluster.
var ErrUntrusted = errors.New("peer certificate not trusted")

// Source holds this process's current Connect leaf certificate and the CA
// roots, kept current by blocking queries to the local Consul agent.
type Source struct {
	api     *api.Client
	service string
	log     hclog.Logger

	mu          sync.RWMutex
	cert        *tls.Certificate
	leaf        *x509.Certificate
	roots       *x509.CertPool
	rootIDs     []string
	trustDomain string
	changed     chan struct{} // closed and replaced at every update

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewSource fetches service's leaf certificate and the CA roots from the
// agent c talks to, retrying until ctx ends (the agent may start after
// us), then keeps them current until Close.
func NewSource(ctx context.Context, c *api.Client, service string, log hclog.Logger) (*Source, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	s := &Source{api: c, service: service, log: log.Named("connect-tls"), changed: make(chan struct{})}
	var rootsIdx, leafIdx uint64
	var err error
	for attempt := 0; ; attempt++ {
		if rootsIdx, err = s.fetchRoots(ctx, 0); err == nil {
			if leafIdx, err = s.fetchLeaf(ctx, 0); err == nil {
				break
			}
		}
		var se api.StatusError
		if errors.As(err, &se) && (se.Code == 401 || se.Code == 403) {
			// Waiting will not help: the token lacks the permission.
			return nil, fmt.Errorf("connect certificate for %s: %w (the Consul token needs service:write on %s)", service, err, service)
		}
		if attempt%10 == 0 {
			s.log.Warn("cannot get a Connect certificate from the local Consul agent yet; retrying", "service", service, "error", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect certificate for %s from consul: %w (last error: %v)", service, ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	s.wg.Go(func() { s.watch(wctx, "roots", rootsIdx, s.fetchRoots) })
	s.wg.Go(func() { s.watch(wctx, "leaf", leafIdx, s.fetchLeaf) })
	leaf := s.Leaf()
	s.log.Info("connect certificate loaded", "service", service, "identity", spiffeOf(leaf),
		"serial", serialHex(leaf.SerialNumber), "expires", leaf.NotAfter.UTC().Format(time.RFC3339), "trust_domain", s.TrustDomain())
	return s, nil
}

// Close stops keeping the certificate current.
func (s *Source) Close() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
}

// Service is the service whose identity this source's certificate carries.
func (s *Source) Service() string { return s.service }

// Leaf is the current leaf certificate.
func (s *Source) Leaf() *x509.Certificate {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.leaf
}

// TrustDomain is the cluster's SPIFFE trust domain (from the roots).
func (s *Source) TrustDomain() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.trustDomain
}

// RootIDs are the ids of the CA roots currently trusted.
func (s *Source) RootIDs() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]string(nil), s.rootIDs...)
}

// Changed returns a channel closed at the next change of the leaf or the
// roots.
func (s *Source) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

func (s *Source) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// watch re-runs fetch as a blocking query from index on, until ctx ends.
// Errors back off (up to 10s) and keep the last good state: the leaf
// in hand stays valid for days, long past any agent restart.
func (s *Source) watch(ctx context.Context, what string, index uint64, fetch func(context.Context, uint64) (uint64, error)) {
	failures := 0 // fetches failed in a row
	for ctx.Err() == nil {
		idx, err := fetch(ctx, index)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("refresh from the consul agent failed; keeping the current one", "what", what, "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff.Delay(250*time.Millisecond, 10*time.Second, failures)):
			}
			failures++
			// The agent may have restarted, and its index with it: ask
			// afresh rather than block on an index it will not reach.
			index = 0
			continue
		}
		failures = 0
		if idx < index { // the agent's index went back (restart): start over
			idx = 0
		}
		index = idx
	}
}

// blockingWait is how long one blocking query waits for a change.
const blockingWait = time.Minute

func (s *Source) fetchRoots(ctx context.Context, index uint64) (uint64, error) {
	list, meta, err := s.api.Agent().ConnectCARoots((&api.QueryOptions{WaitIndex: index, WaitTime: blockingWait}).WithContext(ctx))
	if err != nil {
		return 0, fmt.Errorf("connect CA roots: %w", err)
	}
	pool := x509.NewCertPool()
	var ids []string
	for _, r := range list.Roots {
		certs, err := parseCerts(r.RootCertPEM)
		if err != nil {
			return 0, fmt.Errorf("connect CA root %s: %w", r.ID, err)
		}
		for _, c := range certs {
			pool.AddCert(c)
		}
		ids = append(ids, r.ID)
	}
	if len(ids) == 0 {
		return 0, errors.New("consul publishes no connect CA root (is connect enabled on the servers?)")
	}
	td := strings.ToLower(list.TrustDomain)
	s.mu.Lock()
	changed := strings.Join(ids, ",") != strings.Join(s.rootIDs, ",")
	s.roots, s.rootIDs, s.trustDomain = pool, ids, td
	if changed {
		s.notifyLocked()
	}
	s.mu.Unlock()
	if changed && index != 0 {
		s.log.Info("connect CA roots changed", "roots", strings.Join(ids, ","), "active", list.ActiveRootID)
	}
	return meta.LastIndex, nil
}

func (s *Source) fetchLeaf(ctx context.Context, index uint64) (uint64, error) {
	lc, meta, err := s.api.Agent().ConnectCALeaf(s.service, (&api.QueryOptions{WaitIndex: index, WaitTime: blockingWait}).WithContext(ctx))
	if err != nil {
		return 0, fmt.Errorf("connect leaf certificate for %s: %w", s.service, err)
	}
	cert, err := tls.X509KeyPair([]byte(lc.CertPEM), []byte(lc.PrivateKeyPEM))
	if err != nil {
		return 0, fmt.Errorf("connect leaf certificate for %s: %w", s.service, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return 0, fmt.Errorf("connect leaf certificate for %s: %w", s.service, err)
	}
	cert.Leaf = leaf
	s.mu.Lock()
	changed := s.leaf == nil || !s.leaf.Equal(leaf)
	if changed {
		s.cert, s.leaf = &cert, leaf
		s.notifyLocked()
	}
	s.mu.Unlock()
	if changed && index != 0 {
		s.log.Info("connect leaf certificate renewed", "service", s.service, "serial", serialHex(leaf.SerialNumber),
			"expires", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return meta.LastIndex, nil
}

func parseCerts(pemText string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(pemText)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in PEM")
	}
	return out, nil
}

func (s *Source) current() (*tls.Certificate, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.cert == nil {
		return nil, errors.New("no connect certificate yet")
	}
	return s.cert, nil
}

// Identity is a peer's verified Connect identity.
type Identity struct {
	// URI is the SPIFFE id, e.g. spiffe://<trust domain>/ns/default/dc/dc1/svc/saddlebag-node.
	URI string
	// Service is its service name.
	Service string
	// Serial is the certificate's serial number (hex, colon-separated as Consul writes it).
	Serial string
}

func (id Identity) String() string { return id.URI }

// Verify checks a peer's certificate chain against the roots Consul
// publishes now and returns its identity. want, when not empty, is the
// service the peer must be.
func (s *Source) Verify(chain []*x509.Certificate, want string) (Identity, error) {
	if len(chain) == 0 {
		return Identity{}, fmt.Errorf("%w: the peer presented no certificate", ErrUntrusted)
	}
	s.mu.RLock()
	roots, td := s.roots, s.trustDomain
	s.mu.RUnlock()
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return Identity{}, fmt.Errorf("%w: %s (serial %s) is not signed by a CA root Consul publishes: %v",
			ErrUntrusted, describe(leaf), serialHex(leaf.SerialNumber), err)
	}
	id, err := identityOf(leaf, td)
	if err != nil {
		return Identity{}, err
	}
	if want != "" && id.Service != want {
		return Identity{}, fmt.Errorf("%w: peer is %s, want service %s", ErrUntrusted, id.URI, want)
	}
	return id, nil
}

// identityOf reads the SPIFFE service identity of a Connect leaf.
func identityOf(c *x509.Certificate, trustDomain string) (Identity, error) {
	for _, u := range c.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		if !strings.EqualFold(u.Host, trustDomain) {
			return Identity{}, fmt.Errorf("%w: %s belongs to trust domain %s, not this cluster's %s", ErrUntrusted, u, u.Host, trustDomain)
		}
		svc := serviceOf(u)
		if svc == "" {
			return Identity{}, fmt.Errorf("%w: %s is not a service identity", ErrUntrusted, u)
		}
		return Identity{URI: u.String(), Service: svc, Serial: serialHex(c.SerialNumber)}, nil
	}
	return Identity{}, fmt.Errorf("%w: %s carries no SPIFFE identity", ErrUntrusted, describe(c))
}

// serviceOf is the service of a SPIFFE id .../svc/<name>.
func serviceOf(u *url.URL) string {
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	for i := 0; i+1 < len(parts); i += 2 {
		if parts[i] == "svc" && i+2 == len(parts) {
			return parts[i+1]
		}
	}
	return ""
}

func spiffeOf(c *x509.Certificate) string {
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return ""
}

func describe(c *x509.Certificate) string {
	if id := spiffeOf(c); id != "" {
		return id
	}
	return fmt.Sprintf("certificate %q", c.Subject.String())
}

// serialHex writes a serial as Consul does: hex bytes separated by colons.
func serialHex(n interface{ Bytes() []byte }) string {
	b := n.Bytes()
	var sb strings.Builder
	for i, x := range b {
		if i > 0 {
			sb.WriteByte(':')
		}
		fmt.Fprintf(&sb, "%02x", x)
	}
	return sb.String()
}

// ServerConfig is the TLS config of a server: it presents the current
// leaf, and requires a client certificate that verifies against the
// current roots (the identity is then for an Authorizer to judge).
func (s *Source) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.current() },
		// The chain is verified by VerifyConnection against the roots of
		// the moment, not against a pool fixed in this config.
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := s.Verify(cs.PeerCertificates, "")
			return err
		},
	}
}

// ClientConfig is the TLS config of a client of service target: it
// presents the current leaf and accepts only a server whose certificate
// verifies against the current roots and names target.
func (s *Source) ClientConfig(target string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Not skipped: done by VerifyConnection, against Consul's roots
		// of the moment and the SPIFFE identity (Connect leaves carry no
		// host names to check).
		InsecureSkipVerify:   true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return s.current() },
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := s.Verify(cs.PeerCertificates, target)
			return err
		},
	}
}

// Dial connects to addr over TCP and completes a TLS handshake as a
// client of service target, within timeout.
func (s *Source) Dial(ctx context.Context, addr, target string, timeout time.Duration) (*tls.Conn, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	d := net.Dialer{KeepAlive: 5 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, s.ClientConfig(target))
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	return c, nil
}
