package leader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/saddlebag/saddlebag/internal/ctxutil"
)

// sessionIdentity is the part of the session name every agent of this
// service and node shares: the identity a restarted process recognises
// its predecessor's session by.
func (a *Agent) sessionIdentity() string { return a.cfg.Service + " " + a.cfg.Node }

// sessionName is the identity followed by this process's pid and the
// host's boot id, so that a successor on the same host can tell whether
// the process that made the session is still running.
func (a *Agent) sessionName() string {
	return fmt.Sprintf("%s pid=%d boot=%s", a.sessionIdentity(), os.Getpid(), bootID())
}

// bootID is the kernel's id of this boot ("" if unknown).
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// ownedBy parses a session name of this identity: the pid and boot id of
// the process that made it (0, "" for a name without them).
func (a *Agent) ownedBy(name string) (ok bool, pid int, boot string) {
	id := a.sessionIdentity()
	if name == id {
		return true, 0, ""
	}
	rest, found := strings.CutPrefix(name, id+" ")
	if !found {
		return false, 0, ""
	}
	for _, f := range strings.Fields(rest) {
		if v, ok := strings.CutPrefix(f, "pid="); ok {
			pid, _ = strconv.Atoi(v)
		} else if v, ok := strings.CutPrefix(f, "boot="); ok {
			boot = v
		}
	}
	return true, pid, boot
}

// processAlive reports whether pid, made on this boot, is still running
// here (and is not this process: in a fresh pid namespace a successor can
// have its predecessor's pid).
func processAlive(pid int, boot string) bool {
	if pid <= 0 || pid == os.Getpid() || boot == "" || boot != bootID() {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

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
// The session name carries the pid and boot id of its process: when that
// process still runs on this host (a graceful stop still flushing and
// releasing), takeOver waits up to lock-delay for it to exit first. Two
// live processes under one name is a misconfiguration; after that wait
// the newer one wins, and the older one's leases see their locks
// released and fence their engines.
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
	deadline := time.Now().Add(a.cfg.LockDelay)
	for _, s := range sessions {
		ok, pid, boot := a.ownedBy(s.Name)
		if !ok {
			continue
		}
		if processAlive(pid, boot) {
			a.log.Warn("the previous process under this name still runs here; waiting for it to exit before taking over",
				"pid", pid, "session", s.ID, "at_most", time.Until(deadline).Round(time.Millisecond))
			for processAlive(pid, boot) && time.Now().Before(deadline) {
				if err := ctxutil.Sleep(ctx, 50*time.Millisecond); err != nil {
					return err
				}
			}
			if processAlive(pid, boot) {
				a.log.Error("the previous process under this name is still running: two processes share one name; taking over anyway (its leases will fence)",
					"pid", pid, "session", s.ID)
			}
		}
		old = append(old, s)
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
