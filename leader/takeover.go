package leader

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
)

// sessionName is the name of every session an agent of this service and
// node creates: the identity a restarted process recognises its
// predecessor's session by.
func (a *Agent) sessionName() string { return a.cfg.Service + " " + a.cfg.Node }

// takeOver ends what a previous process under the same identity (same
// service, same node name, same Consul agent) left in Consul, before this
// process creates its first session. A process SIGKILLed and restarted at
// once re-registers the same service and feeds the same TTL check, so the
// dead process's session, tied to that check and serfHealth, would never
// be invalidated: its leadership or primary locks would stay held by
// nobody alive. So, for each such session: every lock it holds in this
// KV layout (the leadership lock, volumes' primary locks) is released
// explicitly (no lock-delay applies to a release, and nothing of the dead
// process can use the lock again: the next acquisition, by this process
// or another node, increases the key's LockIndex, so the predecessor's
// epoch is fenced at every replica the new primary promises), then the
// session is destroyed, holding nothing.
//
// Two live processes under one name is a misconfiguration; the newer one
// wins, and the older one's leases see their locks released and fence
// their engines.
func (a *Agent) takeOver(ctx context.Context) error {
	node, err := a.c.api.Agent().NodeName()
	if err != nil {
		return fmt.Errorf("consul agent node name: %w", err)
	}
	sessions, _, err := a.c.api.Session().Node(node, qopts(ctx))
	if err != nil {
		return fmt.Errorf("list sessions of consul node %s: %w", node, err)
	}
	var old []*api.SessionEntry
	for _, s := range sessions {
		if s.Name == a.sessionName() {
			old = append(old, s)
		}
	}
	if len(old) == 0 {
		return nil
	}
	pairs, _, err := a.c.api.KV().List(a.c.keys.Prefix(), qopts(ctx))
	if err != nil {
		return fmt.Errorf("list locks: %w", err)
	}
	for _, s := range old {
		var released []string
		for _, p := range pairs {
			if p.Session != s.ID || !a.c.keys.isLock(p.Key) {
				continue
			}
			ok, _, err := a.c.api.KV().Release(&api.KVPair{Key: p.Key, Session: s.ID}, wopts(ctx))
			if err != nil {
				return fmt.Errorf("release %s held by the previous session %s: %w", p.Key, s.ID, err)
			}
			if ok {
				released = append(released, fmt.Sprintf("%s@%d", p.Key, p.LockIndex))
			}
		}
		if _, err := a.c.api.Session().Destroy(s.ID, wopts(ctx)); err != nil {
			return fmt.Errorf("destroy the previous session %s: %w", s.ID, err)
		}
		a.mu.Lock()
		a.takenOver++
		a.mu.Unlock()
		a.log.Warn("took over from a previous process under the same name: released its locks and destroyed its session",
			"session", s.ID, "released", strings.Join(released, ","))
	}
	return nil
}

// isLock reports whether key is a lock of this layout: the leadership
// lock or a volume's primary lock.
func (k Keys) isLock(key string) bool {
	if key == k.Leader() {
		return true
	}
	rest, ok := strings.CutPrefix(key, k.Volumes())
	if !ok {
		return false
	}
	id, ok := strings.CutSuffix(rest, "/primary")
	return ok && ValidateName("", id) == nil
}
