package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// Service names registered in Consul.
const (
	NodeService       = "saddlebag-node"
	ControllerService = "saddlebag-controller"
)

// NodeRecord is what a node agent publishes under <prefix>nodes/<node>.
type NodeRecord struct {
	Node          string            `json:"node"`
	ReplicaAddr   string            `json:"replica_addr"`
	CapacityBytes int64             `json:"capacity_bytes"`
	FreeBytes     int64             `json:"free_bytes"`
	Labels        map[string]string `json:"labels,omitempty"`
	// MaxVolumes is how many volumes the node takes (CSI
	// max_volumes_per_node); 0 means no limit.
	MaxVolumes int       `json:"max_volumes,omitempty"`
	Version    string    `json:"version"`
	Updated    time.Time `json:"updated"`
}

// AgentConfig configures an Agent.
type AgentConfig struct {
	Client *Client
	// Node is this saddlebag node's name (service ID, node record key).
	Node string
	// Service is the service to register: NodeService (default) or
	// ControllerService.
	Service string
	// Address and Port are advertised with the service (for a node, its
	// replica server).
	Address string
	Port    int
	// Meta is added to the service's metadata (failure-domain labels).
	Meta map[string]string
	// TTL is the service check's TTL; the agent feeds it every TTL/3.
	// Default 10s, minimum 1s.
	TTL time.Duration
	// LockDelay is the session's lock-delay: after the session is
	// invalidated, nobody can take a lock it held for this long. It must
	// exceed the time a cut-off holder needs to stop I/O (LeaseHoldAfter).
	// Default 5s; Consul caps it at 60s.
	LockDelay time.Duration
	// Record, when set, returns the node record to publish; it is written at
	// every (re-)registration and every RecordEvery (default 30s).
	Record      func() NodeRecord
	RecordEvery time.Duration
	Log         hclog.Logger
}

// Agent keeps a saddlebag process registered in Consul: the service and
// its TTL check, the node record, and one session tied to serfHealth and
// that check. When Consul forgets any of them (restart, failover, the
// check went critical) the agent recreates them; leases held under a
// session that is gone are lost, and each lease reports that itself.
//
// Run must be called exactly once. All other methods are safe for
// concurrent use, before, during and after Run.
type Agent struct {
	cfg       AgentConfig
	c         *Client
	log       hclog.Logger
	serviceID string
	checkID   string

	mu           sync.Mutex
	session      string
	sessionReady chan struct{} // closed while session != ""
	sessions     int           // sessions created so far
	takenOver    int           // predecessors' sessions ended at start
	registered   int           // registrations so far
	volumes      map[string]VolumeHealth
	volumeChecks map[string]VolumeHealth // as last pushed, in the current registration
	leases       map[*Lease]struct{}
}

// NewAgent validates cfg and returns an agent; it does not contact Consul.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.Client == nil || cfg.Node == "" {
		return nil, fmt.Errorf("%w: agent needs a client and a node name", ErrInvalid)
	}
	if err := ValidateNodeName(cfg.Node); err != nil {
		return nil, err
	}
	if cfg.Service == "" {
		cfg.Service = NodeService
	}
	if cfg.TTL == 0 {
		cfg.TTL = 10 * time.Second
	}
	if cfg.TTL < time.Second {
		return nil, fmt.Errorf("%w: check ttl %s is below 1s", ErrInvalid, cfg.TTL)
	}
	if cfg.LockDelay == 0 {
		cfg.LockDelay = 5 * time.Second
	}
	if cfg.LockDelay < 100*time.Millisecond || cfg.LockDelay > 60*time.Second {
		return nil, fmt.Errorf("%w: lock-delay %s outside [100ms, 60s]", ErrInvalid, cfg.LockDelay)
	}
	if cfg.RecordEvery == 0 {
		cfg.RecordEvery = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	a := &Agent{
		cfg: cfg, c: cfg.Client,
		log:          cfg.Log.Named("agent").With("node", cfg.Node),
		serviceID:    cfg.Service + "-" + cfg.Node,
		checkID:      cfg.Service + "-" + cfg.Node + ":ttl",
		sessionReady: make(chan struct{}),
		volumes:      map[string]VolumeHealth{},
		volumeChecks: map[string]VolumeHealth{},
		leases:       map[*Lease]struct{}{},
	}
	return a, nil
}

// Node returns the node name.
func (a *Agent) Node() string { return a.cfg.Node }

// CheckID returns the ID of the agent's TTL check.
func (a *Agent) CheckID() string { return a.checkID }

// ServiceID returns the ID of the registered service.
func (a *Agent) ServiceID() string { return a.serviceID }

// LockDelay returns the session lock-delay.
func (a *Agent) LockDelay() time.Duration { return a.cfg.LockDelay }

// SessionID returns the current session, or "" when there is none.
func (a *Agent) SessionID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.session
}

// Stats counts registrations and sessions created, for status and tests.
type AgentStats struct {
	Registrations int
	Sessions      int
	Leases        int
	// TakenOver counts sessions of a previous process under the same
	// name that this agent ended at start.
	TakenOver int
}

// Stats returns the counters.
func (a *Agent) Stats() AgentStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return AgentStats{Registrations: a.registered, Sessions: a.sessions, Leases: len(a.leases), TakenOver: a.takenOver}
}

// waitSession returns the current session, waiting for one if needed.
func (a *Agent) waitSession(ctx context.Context) (string, error) {
	for {
		a.mu.Lock()
		sid, ready := a.session, a.sessionReady
		a.mu.Unlock()
		if sid != "" {
			return sid, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %w", ErrNoSession, ctx.Err())
		}
	}
}

func (a *Agent) setSession(sid string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case sid != "" && a.session == "":
		close(a.sessionReady)
		a.sessions++
	case sid == "" && a.session != "":
		a.sessionReady = make(chan struct{})
	}
	a.session = sid
}

// Run keeps the registration alive until ctx is done, then releases the
// leases still held, destroys the session and deregisters (bounded by a
// few seconds; a Consul that is down then is left to expire them).
func (a *Agent) Run(ctx context.Context) error {
	tick := a.cfg.TTL / 3
	st := &runState{}
	for {
		a.step(ctx, st)
		select {
		case <-ctx.Done():
			a.shutdown()
			return nil
		case <-time.After(tick):
		}
	}
}

// runState is the loop's own state; only Run touches it.
type runState struct {
	registered bool
	reachable  bool
	failing    bool // logged the current outage already
	recordAt   time.Time
}

// step does one round: register if needed, feed the TTL check, refresh the
// node record and volume checks, and make sure a live session exists.
func (a *Agent) step(ctx context.Context, st *runState) {
	rctx, cancel := bounded(ctx)
	defer cancel()
	err := a.stepErr(rctx, st)
	switch {
	case err == nil && st.failing:
		st.failing = false
		a.log.Info("consul reachable again")
	case err != nil && ctx.Err() == nil && !st.failing:
		st.failing = true
		a.log.Error("consul unreachable or refusing; retrying", "error", err)
	}
}

func (a *Agent) stepErr(ctx context.Context, st *runState) error {
	if !st.registered {
		if err := a.register(ctx); err != nil {
			return err
		}
		st.registered, st.recordAt = true, time.Time{}
	}
	if err := a.c.api.Agent().UpdateTTLOpts(a.checkID, "saddlebag agent alive", api.HealthPassing, aopts(ctx)); err != nil {
		// Unknown check (Consul restarted and forgot it) or Consul down:
		// register again on the next round, which is idempotent.
		st.registered = false
		return fmt.Errorf("feed ttl check %s: %w", a.checkID, err)
	}
	// The session first: leases depend on it, the rest is informational.
	if err := a.keepSession(ctx); err != nil {
		return err
	}
	var errs []error
	if a.cfg.Record != nil && time.Now().After(st.recordAt) {
		if err := a.writeRecord(ctx); err != nil {
			errs = append(errs, err)
		} else {
			st.recordAt = time.Now().Add(a.cfg.RecordEvery)
		}
	}
	if err := a.refreshVolumeChecks(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := a.dropStaleVolumeChecks(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (a *Agent) register(ctx context.Context) error {
	reg := &api.AgentServiceRegistration{
		ID: a.serviceID, Name: a.cfg.Service, Address: a.cfg.Address, Port: a.cfg.Port,
		Meta: map[string]string{"node": a.cfg.Node},
		Check: &api.AgentServiceCheck{
			CheckID: a.checkID, Name: a.cfg.Service + " agent alive", TTL: a.cfg.TTL.String(),
			Status: api.HealthPassing, Notes: "fed by the saddlebag agent every ttl/3",
		},
	}
	for k, v := range a.cfg.Meta {
		reg.Meta[k] = v
	}
	if err := a.c.api.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return fmt.Errorf("register service %s: %w", a.serviceID, err)
	}
	a.mu.Lock()
	a.registered++
	n := a.registered
	clear(a.volumeChecks)
	a.mu.Unlock()
	a.log.Info("registered with consul", "service", a.cfg.Service, "service_id", a.serviceID, "check_id", a.checkID, "registration", n)
	return nil
}

// dropStaleVolumeChecks removes the critical volume checks on this agent's
// service that no volume this process reports owns: those an earlier
// process left when it died as a volume's primary, once their TTL ran out
// (nothing feeds them). They would show a volume served elsewhere as
// offline here. A check still passing is left alone: the volume may be
// one this process is about to adopt and report (an upgrade), and
// removing it would make it flap.
func (a *Agent) dropStaleVolumeChecks(ctx context.Context) error {
	filter := fmt.Sprintf("ServiceID == %q and Status == %q", a.serviceID, api.HealthCritical)
	checks, err := a.c.api.Agent().ChecksWithFilterOpts(filter, aopts(ctx))
	if err != nil {
		return fmt.Errorf("list the checks of service %s: %w", a.serviceID, err)
	}
	var errs []error
	for id := range checks {
		volume, ok := strings.CutPrefix(id, VolumeCheckID(""))
		if !ok {
			continue
		}
		a.mu.Lock()
		_, ours := a.volumes[volume]
		a.mu.Unlock()
		if ours {
			continue
		}
		if err := a.c.api.Agent().CheckDeregisterOpts(id, aopts(ctx)); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("deregister stale volume check %s: %w", id, err))
			continue
		}
		a.log.Info("removed a volume check an earlier process left", "check_id", id)
	}
	return errors.Join(errs...)
}

func (a *Agent) writeRecord(ctx context.Context) error {
	rec := a.cfg.Record()
	rec.Node, rec.Updated = a.cfg.Node, time.Now().UTC()
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode node record: %w", err)
	}
	if _, err := a.c.api.KV().Put(&api.KVPair{Key: a.c.keys.Node(a.cfg.Node), Value: b}, wopts(ctx)); err != nil {
		return fmt.Errorf("write node record: %w", err)
	}
	return nil
}

// ReadNode returns a node's record.
func (c *Client) ReadNode(ctx context.Context, node string) (NodeRecord, error) {
	var rec NodeRecord
	if err := ValidateNodeName(node); err != nil {
		return rec, err
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	pair, _, err := c.api.KV().Get(c.keys.Node(node), qopts(ctx))
	if err != nil {
		return rec, fmt.Errorf("read node record %s: %w", node, err)
	}
	if pair == nil {
		return rec, fmt.Errorf("node %s: %w", node, ErrNotFound)
	}
	if err := json.Unmarshal(pair.Value, &rec); err != nil {
		return rec, fmt.Errorf("decode node record %s: %w", node, err)
	}
	return rec, nil
}

// keepSession makes sure the agent has a live session, creating one when
// it has none or Consul has invalidated the current one.
func (a *Agent) keepSession(ctx context.Context) error {
	if sid := a.SessionID(); sid != "" {
		se, _, err := a.c.api.Session().Info(sid, qopts(ctx))
		if err != nil {
			return fmt.Errorf("check session %s: %w", sid, err)
		}
		if se != nil {
			return nil
		}
		a.setSession("")
		a.mu.Lock()
		held := len(a.leases)
		a.mu.Unlock()
		a.log.Error("consul session invalidated; every lease held under it is lost", "session", sid, "leases", held)
	}
	a.mu.Lock()
	first := a.sessions == 0
	a.mu.Unlock()
	if first {
		if err := a.takeOver(ctx); err != nil {
			return err
		}
	}
	sid, _, err := a.c.api.Session().Create(&api.SessionEntry{
		Name:          a.sessionName(),
		LockDelay:     a.cfg.LockDelay,
		Behavior:      api.SessionBehaviorRelease,
		NodeChecks:    []string{"serfHealth"},
		ServiceChecks: []api.ServiceCheck{{ID: a.checkID}},
	}, wopts(ctx))
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	a.setSession(sid)
	a.log.Info("created consul session", "session", sid, "lock_delay", a.cfg.LockDelay)
	return nil
}

// shutdown releases what the agent holds, in order: leases (explicitly, so
// no lock-delay applies), the session, the service.
func (a *Agent) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.mu.Lock()
	leases := make([]*Lease, 0, len(a.leases))
	for l := range a.leases {
		leases = append(leases, l)
	}
	a.mu.Unlock()
	for _, l := range leases {
		if err := l.Release(ctx); err != nil {
			a.log.Warn("release lease at shutdown", "key", l.Key(), "error", err)
		}
	}
	if sid := a.SessionID(); sid != "" {
		if _, err := a.c.api.Session().Destroy(sid, wopts(ctx)); err != nil {
			a.log.Warn("destroy session at shutdown", "session", sid, "error", err)
		}
		a.setSession("")
	}
	if err := a.c.api.Agent().ServiceDeregisterOpts(a.serviceID, aopts(ctx)); err != nil {
		a.log.Warn("deregister at shutdown", "service_id", a.serviceID, "error", err)
	}
	a.log.Info("left consul")
}

func (a *Agent) addLease(l *Lease) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.leases[l] = struct{}{}
}

func (a *Agent) removeLease(l *Lease) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.leases, l)
}
