package connecttls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// ErrDenied means Consul's intentions do not let a peer reach a service.
var ErrDenied = errors.New("denied by consul intentions")

// AuthorizeCacheTTL is how long an Authorizer reuses a decision: a changed
// intention applies to new connections within it (plus the time the local
// agent takes to learn of the change, normally well under a second).
const AuthorizeCacheTTL = time.Second

// Authorizer decides, with Consul intentions, which verified peers may
// reach Target.
type Authorizer struct {
	Source *Source
	API    *api.Client
	Target string

	mu    sync.Mutex
	cache map[string]decision
}

type decision struct {
	err error
	at  time.Time
}

// Authorize verifies the peer certificate of a completed server-side
// handshake against the current roots and asks the local agent whether
// its identity may reach a.Target. A denial wraps ErrDenied and names
// the identity and Consul's reason; an untrusted certificate wraps
// ErrUntrusted.
func (a *Authorizer) Authorize(ctx context.Context, cs tls.ConnectionState) (Identity, error) {
	id, err := a.Source.Verify(cs.PeerCertificates, "")
	if err != nil {
		return Identity{}, err
	}
	key := id.URI + "|" + id.Serial
	a.mu.Lock()
	d, ok := a.cache[key]
	a.mu.Unlock()
	if ok && time.Since(d.at) < AuthorizeCacheTTL {
		return id, d.err
	}
	type result struct {
		r   *api.AgentAuthorize
		err error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := a.API.Agent().ConnectAuthorize(&api.AgentAuthorizeParams{Target: a.Target, ClientCertURI: id.URI, ClientCertSerial: id.Serial})
		ch <- result{r, err}
	}()
	var res result
	select {
	case res = <-ch:
	case <-ctx.Done():
		return id, fmt.Errorf("authorize %s to %s: %w", id.URI, a.Target, ctx.Err())
	}
	if res.err != nil {
		// Not cached: an unreachable agent is not a decision.
		return id, fmt.Errorf("authorize %s to %s: ask the consul agent: %w", id.URI, a.Target, res.err)
	}
	if !res.r.Authorized {
		err = fmt.Errorf("%w: %s may not reach %s (%s)", ErrDenied, id.URI, a.Target, res.r.Reason)
	}
	a.mu.Lock()
	if a.cache == nil || len(a.cache) > 1024 {
		a.cache = map[string]decision{}
	}
	a.cache[key] = decision{err: err, at: time.Now()}
	a.mu.Unlock()
	return id, err
}
