package leader

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
)

// HealthState is a volume's health as the Consul UI shows it.
type HealthState string

const (
	// Healthy: as many in-sync replicas as the spec asks (check passing).
	Healthy HealthState = "healthy"
	// Degraded: serving, with fewer in-sync replicas than asked (warning).
	Degraded HealthState = "degraded"
	// Offline: not serving (critical); the note says why.
	Offline HealthState = "offline"
)

// VolumeHealth is a volume's state and a note naming its replicas.
type VolumeHealth struct {
	State HealthState
	Note  string
}

func (h VolumeHealth) status() string {
	switch h.State {
	case Healthy:
		return api.HealthPassing
	case Degraded:
		return api.HealthWarning
	}
	return api.HealthCritical
}

// ClassifyVolume derives a serving volume's health from the replica count
// the spec asks for, the replicas it has and those in sync (addresses).
func ClassifyVolume(want int, replicas, inSync []string) VolumeHealth {
	return ClassifyVolumeNamed(want, replicas, inSync, nil)
}

// ClassifyVolumeNamed is ClassifyVolume with the note naming each replica
// by its node (names maps a replica address to it; an address it lacks
// is shown as is): "in sync 1 of 2: node1; not in sync: node3".
func ClassifyVolumeNamed(want int, replicas, inSync []string, names map[string]string) VolumeHealth {
	name := func(addrs []string) string {
		out := make([]string, len(addrs))
		for i, a := range addrs {
			out[i] = a
			if n := names[a]; n != "" {
				out[i] = n
			}
		}
		if len(out) == 0 {
			return "none"
		}
		slices.Sort(out)
		return strings.Join(out, ", ")
	}
	var out []string
	for _, r := range replicas {
		if !slices.Contains(inSync, r) {
			out = append(out, r)
		}
	}
	note := fmt.Sprintf("in sync %d of %d: %s", len(inSync), want, name(inSync))
	if len(out) > 0 {
		note += "; not in sync: " + name(out)
	}
	switch {
	case len(inSync) == 0:
		return VolumeHealth{State: Offline, Note: "no in-sync replica; " + note}
	case len(inSync) < want:
		return VolumeHealth{State: Degraded, Note: note}
	}
	return VolumeHealth{State: Healthy, Note: note}
}

// OfflineHealth is the health of a volume that cannot be served, and why.
func OfflineHealth(why string) VolumeHealth { return VolumeHealth{State: Offline, Note: why} }

// VolumeCheckID is the Consul check ID of a volume's health check.
func VolumeCheckID(volume string) string { return "saddlebag-volume:" + volume }

// ReportVolume shows h as volume's health check, attached to this agent's
// service. The agent keeps the check alive (its TTL is three of the
// agent's) and re-registers it after Consul forgets it, until
// ForgetVolume. If this agent dies the check goes critical with it.
func (a *Agent) ReportVolume(ctx context.Context, volume string, h VolumeHealth) error {
	a.mu.Lock()
	a.volumes[volume] = h
	a.mu.Unlock()
	ctx, cancel := bounded(ctx)
	defer cancel()
	return a.pushVolumeCheck(ctx, volume, h)
}

// ForgetVolume removes volume's health check (clean demotion).
func (a *Agent) ForgetVolume(ctx context.Context, volume string) error {
	a.mu.Lock()
	delete(a.volumes, volume)
	delete(a.volumeChecks, volume)
	a.mu.Unlock()
	ctx, cancel := bounded(ctx)
	defer cancel()
	if err := a.c.api.Agent().CheckDeregisterOpts(VolumeCheckID(volume), aopts(ctx)); err != nil && !isNotFound(err) {
		return fmt.Errorf("deregister volume check %s: %w", volume, err)
	}
	return nil
}

// pushVolumeCheck sends h to the volume's check. Consul's agents delay
// syncing an output-only change to the catalog (check_update_interval, 5m
// by default), so when the state or note changes the check is registered
// afresh with a different initial status, which the update then changes:
// a status change is synced at once.
func (a *Agent) pushVolumeCheck(ctx context.Context, volume string, h VolumeHealth) error {
	a.mu.Lock()
	pushed, registered := a.volumeChecks[volume]
	a.mu.Unlock()
	agent := a.c.api.Agent()
	if !registered || pushed != h {
		initial := api.HealthWarning
		if h.status() == api.HealthWarning {
			initial = api.HealthCritical
		}
		reg := &api.AgentCheckRegistration{
			ID: VolumeCheckID(volume), Name: "saddlebag volume " + volume, ServiceID: a.serviceID,
			Notes: "volume health reported by its primary: healthy, degraded or offline",
			AgentServiceCheck: api.AgentServiceCheck{
				TTL: (3 * a.cfg.TTL).String(), Status: initial,
			},
		}
		if err := agent.CheckRegisterOpts(reg, aopts(ctx)); err != nil {
			return fmt.Errorf("register volume check %s: %w", volume, err)
		}
	}
	if err := agent.UpdateTTLOpts(VolumeCheckID(volume), string(h.State)+": "+h.Note, h.status(), aopts(ctx)); err != nil {
		a.mu.Lock()
		delete(a.volumeChecks, volume)
		a.mu.Unlock()
		return fmt.Errorf("update volume check %s: %w", volume, err)
	}
	a.mu.Lock()
	if _, still := a.volumes[volume]; still {
		a.volumeChecks[volume] = h
	}
	a.mu.Unlock()
	return nil
}

// refreshVolumeChecks re-sends every reported volume's health, keeping the
// TTL checks alive and re-registering any Consul forgot.
func (a *Agent) refreshVolumeChecks(ctx context.Context) error {
	a.mu.Lock()
	vols := make(map[string]VolumeHealth, len(a.volumes))
	for v, h := range a.volumes {
		vols[v] = h
	}
	a.mu.Unlock()
	for v, h := range vols {
		if err := a.pushVolumeCheck(ctx, v, h); err != nil {
			return err
		}
	}
	return nil
}
