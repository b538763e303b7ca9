package scheduler

import (
	"fmt"
	"sort"
	"time"
)

// VolumeState is one existing volume as re-replication planning sees it.
type VolumeState struct {
	Volume    string
	SizeBytes int64
	Replicas  int // desired count
	Spread    string
	Requisite []map[string]string
	Preferred []map[string]string // preferred topologies for new replicas, in order
	Holders   []string            // node IDs holding a replica now
}

// Replacement retires the replica on Lost and, when New is set, puts a full
// copy on New. The controller drives the copy and retires Lost only once
// New is in sync (docs/architecture.md, "Data path").
type Replacement struct {
	Volume string
	Lost   string // node ID whose replica is retired
	New    string // node ID that receives a full copy ("" if none available — then Reason says why)
	Reason string // why Lost is retired, and what happens instead

	// Surplus is true when the volume's other replicas already cover the
	// desired count, so Lost is retired with no copy made (New is "").
	Surplus bool
	// Err is why no node was chosen when New is "" and Surplus is false: a
	// *ShortfallError (ErrShortfall), or ErrInvalid for a volume whose spec
	// cannot be placed (a negative size). nil otherwise.
	Err error
}

// PlanReplacements returns, for each volume, a replacement for every holder
// whose node has been down longer than grace at time now, or is gone from
// nodes entirely. A node that is unhealthy but has a zero DownSince is not
// yet known to be down for any length of time, and is left alone.
//
// New nodes are chosen with Place, excluding every current holder and
// spreading away from the failure domains of the holders that stay. Space is
// accounted across the plan: a node that receives a copy of one volume has
// that volume's size less free space (and one more replica) when the next
// volume is planned. Volumes are planned in order of name, lost holders in
// order of ID; the result is in that order and the same for the same input,
// whatever the order of nodes, volumes and holders.
//
// A volume keeping at least Replicas live holders gets Surplus replacements
// for its lost ones. When too few nodes qualify, as many lost holders as
// possible get a New node and the rest carry New "" and Err.
//
// A snapshot that lists a node without an ID, or one ID twice, cannot be
// trusted to say which nodes are down: PlanReplacements then returns nil.
// CheckNodes tells the caller why.
func PlanReplacements(nodes []Node, vols []VolumeState, now time.Time, grace time.Duration) []Replacement {
	if CheckNodes(nodes) != nil {
		return nil
	}
	work := make(map[string]Node, len(nodes))
	for _, n := range nodes {
		work[n.ID] = n
	}
	var plan []Replacement
	for _, v := range sortedVolumes(vols) {
		plan = append(plan, planVolume(work, v, now, grace)...)
	}
	return plan
}

// CheckNodes returns an error matching ErrInvalid when a snapshot lists a
// node without an ID or the same ID twice.
func CheckNodes(nodes []Node) error {
	return validate(nodes, Request{Replicas: 1})
}

// planVolume plans the replacements of one volume and books the space they
// take in work.
func planVolume(work map[string]Node, v VolumeState, now time.Time, grace time.Duration) []Replacement {
	holders := sortedKeys(setOf(v.Holders))
	var lost, live []string
	why := make(map[string]string)
	for _, h := range holders {
		if reason, gone := lostReason(work, h, now, grace); gone {
			lost = append(lost, h)
			why[h] = reason
		} else {
			live = append(live, h)
		}
	}
	if len(lost) == 0 {
		return nil
	}
	need := min(max(v.Replicas-len(live), 0), len(lost))
	toPlace, surplus := lost[:need], lost[need:]

	var out []Replacement
	if len(toPlace) > 0 {
		req := Request{
			Volume:    v.Volume,
			SizeBytes: v.SizeBytes,
			Replicas:  len(toPlace),
			Spread:    v.Spread,
			Requisite: v.Requisite,
			Preferred: v.Preferred,
			Exclude:   lost,
			Keep:      live,
		}
		chosen, err := place(sortedNodes(work), req)
		for i, l := range toPlace {
			r := Replacement{Volume: v.Volume, Lost: l}
			if i < len(chosen) {
				r.New = chosen[i]
				r.Reason = fmt.Sprintf("%s; full copy to %s", why[l], chosen[i])
				n := work[chosen[i]]
				n.FreeBytes -= v.SizeBytes
				n.Replicas++
				work[chosen[i]] = n
			} else {
				r.Err = err
				r.Reason = fmt.Sprintf("%s; no replacement: %v", why[l], err)
			}
			out = append(out, r)
		}
	}
	for _, l := range surplus {
		out = append(out, Replacement{
			Volume:  v.Volume,
			Lost:    l,
			Surplus: true,
			Reason: fmt.Sprintf("%s; not replaced: %d other %s cover the %d wanted",
				why[l], len(live)+len(toPlace), plural(len(live)+len(toPlace), "replica", "replicas"), v.Replicas),
		})
	}
	return out
}

// lostReason reports whether the replica on node id is lost at now, and why.
func lostReason(work map[string]Node, id string, now time.Time, grace time.Duration) (string, bool) {
	n, ok := work[id]
	if !ok {
		return fmt.Sprintf("node %s is gone from the cluster", id), true
	}
	if n.Healthy || n.DownSince.IsZero() {
		return "", false
	}
	down := now.Sub(n.DownSince)
	if down <= grace {
		return "", false
	}
	return fmt.Sprintf("node %s down for %s, longer than the %s grace", id, down, grace), true
}

// sortedVolumes copies vols sorted by name. Two entries with one name are
// ordered by their full contents, so the plan never depends on input order.
func sortedVolumes(vols []VolumeState) []VolumeState {
	out := append([]VolumeState(nil), vols...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Volume != out[j].Volume {
			return out[i].Volume < out[j].Volume
		}
		return volumeKey(out[i]) < volumeKey(out[j])
	})
	return out
}

// volumeKey renders v with its holders sorted (fmt prints maps sorted).
func volumeKey(v VolumeState) string {
	v.Holders = sortedKeys(setOf(v.Holders))
	return fmt.Sprintf("%+v", v)
}

func sortedNodes(work map[string]Node) []Node {
	out := make([]Node, 0, len(work))
	for _, id := range sortedKeys(work) {
		out = append(out, work[id])
	}
	return out
}
