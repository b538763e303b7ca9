package clusterstatus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/saddlebag/saddlebag/leader"
)

// Replica states.
const (
	InSync    = "in sync"
	Resyncing = "resyncing"
	Missing   = "missing"
	Lost      = "lost"
)

// Health of a volume: the primary's check (healthy, degraded, offline),
// or not staged when no node is its primary.
const NotStaged = "not staged"

// Status is the cluster as Consul shows it.
type Status struct {
	Nodes   []Node    `json:"nodes"`
	Volumes []Volume  `json:"volumes"`
	Read    time.Time `json:"read"`
}

// Node is a storage node and its health.
type Node struct {
	Name        string `json:"name"`
	ReplicaAddr string `json:"replica_addr"`
	Healthy     bool   `json:"healthy"`
	Why         string `json:"why,omitempty"`
	FreeBytes   int64  `json:"free_bytes"`
	Capacity    int64  `json:"capacity_bytes"`
}

// Volume is one volume.
type Volume struct {
	ID        string `json:"id"`
	Name      string `json:"name,omitempty"`
	State     string `json:"state"` // the record's: creating, ready, deleting
	SizeBytes int64  `json:"size_bytes"`
	Wanted    int    `json:"replicas_wanted"`
	FSType    string `json:"fs_type,omitempty"`
	Encrypted bool   `json:"encrypted,omitempty"`
	// Primary is the node holding the primary lease ("" when none).
	Primary string `json:"primary,omitempty"`
	Epoch   uint64 `json:"epoch,omitempty"`
	InSync  int    `json:"in_sync"`
	// Health is healthy, degraded or offline (the primary's check in
	// Consul) or not staged; HealthNote is the check's note.
	Health     string    `json:"health"`
	HealthNote string    `json:"health_note,omitempty"`
	Replicas   []Replica `json:"replicas"`
	// ProgressAge is how old the primary's progress record is (the
	// replica states and resync figures come from it), when one is used.
	ProgressAge float64 `json:"progress_age_seconds,omitempty"`
}

// Replica is one replica of a volume.
type Replica struct {
	Node  string `json:"node"`
	Addr  string `json:"addr"`
	State string `json:"state"` // InSync, Resyncing, Missing, Lost
	// Detail: the engine's view (dropped, unavailable, waiting for resync
	// and why), the controller's (a replacement being added), or the
	// node being down.
	Detail       string  `json:"detail,omitempty"`
	MissingBytes int64   `json:"missing_bytes,omitempty"`
	Resync       *Resync `json:"resync,omitempty"`
}

// Resync is a running resync's progress.
type Resync struct {
	Mode        string  `json:"mode"`
	TotalBytes  int64   `json:"total_bytes"`
	DoneBytes   int64   `json:"done_bytes"`
	Percent     float64 `json:"percent"`
	BytesPerSec float64 `json:"bytes_per_sec"`
	ETASeconds  float64 `json:"eta_seconds"`
}

// ErrACL is Read's error when the Consul token cannot read everything.
var ErrACL = errors.New("permission denied")

// Read reads the cluster's status; with volume set, only that volume's
// (ErrNotFound when there is none).
func Read(ctx context.Context, c *leader.Client, volume string) (Status, error) {
	st := Status{Read: time.Now().UTC()}
	// Consul silently leaves what a token may not read out of lists: an
	// empty cluster would be shown. A single read is refused instead.
	if _, _, err := c.API().KV().Get(c.Keys().Leader(), (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		var se api.StatusError
		if errors.As(err, &se) && se.Code == 403 {
			return st, fmt.Errorf("%w: the Consul token may not read %s: it needs key_prefix %q read, and node_prefix and service_prefix read",
				ErrACL, c.Keys().Prefix(), c.Keys().Prefix())
		}
		return st, fmt.Errorf("read %s: %w", c.Keys().Leader(), err)
	}
	nodes, err := c.ListNodes(ctx)
	if err != nil {
		return st, err
	}
	byName := map[string]leader.NodeState{}
	for _, n := range nodes {
		st.Nodes = append(st.Nodes, Node{Name: n.Node, ReplicaAddr: n.ReplicaAddr, Healthy: n.Healthy, Why: n.Why,
			FreeBytes: n.FreeBytes, Capacity: n.CapacityBytes})
		byName[n.Node] = n
	}
	var vols []leader.VolumeRecord
	if volume != "" {
		rec, _, err := c.GetVolume(ctx, volume)
		if err != nil {
			return st, err
		}
		vols = []leader.VolumeRecord{rec}
	} else if vols, err = c.ListVolumes(ctx); err != nil {
		return st, err
	}
	checks, err := volumeChecks(ctx, c)
	if err != nil {
		return st, err
	}
	for _, rec := range vols {
		v, err := readVolume(ctx, c, rec, byName, checks, st.Read)
		if err != nil {
			return st, err
		}
		st.Volumes = append(st.Volumes, v)
	}
	slices.SortFunc(st.Volumes, func(a, b Volume) int { return strings.Compare(a.ID, b.ID) })
	return st, nil
}

// volumeChecks returns the volume health checks by check ID and the
// service instance (a node's saddlebag-node service) they belong to.
func volumeChecks(ctx context.Context, c *leader.Client) (map[string]*api.HealthCheck, error) {
	checks, _, err := c.API().Health().Checks(leader.NodeService, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("volume health checks: %w", err)
	}
	out := map[string]*api.HealthCheck{}
	for _, ch := range checks {
		if strings.HasPrefix(ch.CheckID, "saddlebag-volume:") {
			out[ch.CheckID+"@"+ch.ServiceID] = ch
		}
	}
	return out, nil
}

func readVolume(ctx context.Context, c *leader.Client, rec leader.VolumeRecord, byName map[string]leader.NodeState,
	checks map[string]*api.HealthCheck, now time.Time) (Volume, error) {
	v := Volume{ID: rec.ID, Name: rec.Name, State: string(rec.State), SizeBytes: rec.Spec.SizeBytes, Wanted: rec.Spec.Replicas,
		FSType: rec.Spec.FSType, Encrypted: rec.Encryption != nil, Health: NotStaged}
	holder, err := c.ReadPrimary(ctx, rec.ID)
	if err != nil {
		return v, err
	}
	v.Primary, v.Epoch = holder.Node, holder.Epoch
	inSync, _, err := c.ReadInSync(ctx, rec.ID)
	if err != nil && !errors.Is(err, leader.ErrNotFound) {
		return v, err
	}
	var progress map[string]leader.ReplicaProgress
	if v.Primary != "" {
		if pr, err := c.ReadResync(ctx, rec.ID); err == nil && pr.Epoch == v.Epoch {
			progress = map[string]leader.ReplicaProgress{}
			for _, p := range pr.Replicas {
				progress[p.Addr] = p
			}
			v.ProgressAge = max(0, now.Sub(pr.Updated).Seconds())
		} else if err != nil && !errors.Is(err, leader.ErrNotFound) {
			return v, err
		}
		// The primary reports the check on its own service instance.
		if ch := checks[leader.VolumeCheckID(rec.ID)+"@"+leader.NodeService+"-"+v.Primary]; ch != nil {
			v.Health, v.HealthNote = checkHealth(ch)
		} else {
			v.Health = "unknown"
			v.HealthNote = "the primary reports no health check yet"
		}
	}
	for _, r := range rec.Replicas {
		rep := Replica{Node: r.Node, Addr: r.Addr}
		p, known := progress[r.Addr]
		switch {
		case r.State == leader.ReplicaLost:
			rep.State, rep.Detail = Lost, "its node was down beyond the grace: being replaced"
		case known && p.State == "in-sync":
			rep.State = InSync
		case known && p.State == "resyncing":
			rep.State, rep.MissingBytes = Resyncing, p.MissingBytes
			rep.Resync = &Resync{Mode: p.Mode, TotalBytes: p.TotalBytes, DoneBytes: p.DoneBytes, Percent: p.Percent,
				BytesPerSec: p.BytesPerSec, ETASeconds: p.ETASeconds}
		case known:
			rep.State, rep.MissingBytes = Missing, p.MissingBytes
			rep.Detail = p.State
			if p.Reason != "" {
				rep.Detail += ": " + p.Reason
			}
		case inSync.Promotable(r.Addr):
			rep.State = InSync
		default:
			rep.State = Missing
		}
		if r.State == leader.ReplicaAdding && rep.State != InSync {
			rep.Detail = strings.TrimPrefix(rep.Detail+"; a replacement being copied", "; ")
		}
		if n, ok := byName[r.Node]; ok && !n.Healthy {
			rep.Detail = strings.TrimPrefix(rep.Detail+"; node down: "+n.Why, "; ")
		} else if !ok {
			rep.Detail = strings.TrimPrefix(rep.Detail+"; no node record", "; ")
		}
		if rep.State == InSync {
			v.InSync++
		}
		v.Replicas = append(v.Replicas, rep)
	}
	if v.Primary == "" {
		v.HealthNote = fmt.Sprintf("no node holds the primary lease; the last in-sync record names %d of %d", v.InSync, v.Wanted)
	}
	return v, nil
}

// checkHealth turns a volume check into its health and note ("degraded:
// in sync 1 of 2: ..." → degraded, "in sync 1 of 2: ...").
func checkHealth(ch *api.HealthCheck) (string, string) {
	state, note, ok := strings.Cut(ch.Output, ": ")
	switch state {
	case string(leader.Healthy), string(leader.Degraded), string(leader.Offline):
		if ok {
			return state, note
		}
	}
	switch ch.Status {
	case api.HealthPassing:
		return string(leader.Healthy), ch.Output
	case api.HealthWarning:
		return string(leader.Degraded), ch.Output
	}
	return string(leader.Offline), ch.Output
}
