package scheduler

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/shoenig/test/must"
	"pgregory.net/rapid"
)

// Property tests: random snapshots and requests, checked against an
// oracle written independently of filter.go.

var (
	propNow   = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	propGrace = 5 * time.Minute
)

// genLabels draws a label set over small alphabets so that nodes share
// failure domains and topologies often.
func genLabels(t *rapid.T, label string) map[string]string {
	l := make(map[string]string)
	if rapid.IntRange(0, 5).Draw(t, label+"-hasRack") > 0 {
		l["rack"] = rapid.SampledFrom([]string{"a", "b", "c", "d"}).Draw(t, label+"-rack")
	}
	if rapid.IntRange(0, 5).Draw(t, label+"-hasZone") > 0 {
		l["zone"] = rapid.SampledFrom([]string{"x", "y"}).Draw(t, label+"-zone")
	}
	return l
}

// genNodes draws 0–9 nodes with distinct IDs.
func genNodes(t *rapid.T) []Node {
	all := []string{"n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9"}
	ids := rapid.Permutation(all).Draw(t, "ids")[:rapid.IntRange(2, len(all)).Draw(t, "nodes")]
	nodes := make([]Node, len(ids))
	for i, id := range ids {
		n := Node{
			ID:        id,
			Healthy:   rapid.IntRange(0, 9).Draw(t, id+"-sick") < 9,
			Draining:  rapid.IntRange(0, 9).Draw(t, id+"-drain") == 9,
			FreeBytes: int64(8-rapid.IntRange(0, 8).Draw(t, id+"-freeShort"))*GiB + int64(rapid.IntRange(-1, 1).Draw(t, id+"-freeOff")),
			Labels:    genLabels(t, id),
			Replicas:  rapid.IntRange(0, 6).Draw(t, id+"-replicas"),
		}
		if !n.Healthy && rapid.IntRange(0, 5).Draw(t, id+"-downKnown") > 0 {
			n.DownSince = propNow.Add(-time.Duration(rapid.IntRange(0, 20).Draw(t, id+"-downMin")) * time.Minute)
		}
		nodes[i] = n
	}
	return nodes
}

// genTopologies draws 0–2 topologies, each a non-empty subset of segments.
func genTopologies(t *rapid.T, label string) []map[string]string {
	n := rapid.IntRange(0, 2).Draw(t, label+"-count")
	out := make([]map[string]string, n)
	for i := range out {
		l := genLabels(t, fmt.Sprintf("%s%d", label, i))
		if len(l) == 0 {
			l["zone"] = "x"
		}
		out[i] = l
	}
	return out
}

func genIDs(t *rapid.T, label string) []string {
	return rapid.SliceOfN(rapid.SampledFrom([]string{"n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9", "zz"}), 0, 4).Draw(t, label)
}

func genRequest(t *rapid.T, withKeep bool) Request {
	req := Request{
		Volume:    "v",
		SizeBytes: int64(rapid.IntRange(0, 4).Draw(t, "size")) * GiB,
		Replicas:  rapid.IntRange(1, 4).Draw(t, "replicas"),
		Spread:    rapid.SampledFrom([]string{"", "rack", "zone"}).Draw(t, "spread"),
		Preferred: genTopologies(t, "preferred"),
		Exclude:   genIDs(t, "exclude"),
	}
	if rapid.IntRange(0, 3).Draw(t, "hasRequisite") == 3 {
		req.Requisite = genTopologies(t, "requisite")
	}
	if withKeep {
		req.Keep = genIDs(t, "keep")
	}
	return req
}

// qualifies is the oracle for Filter: the rules as the issue states them.
func qualifies(n Node, req Request) bool {
	if !n.Healthy || n.Draining || n.FreeBytes < req.SizeBytes {
		return false
	}
	if slices.Contains(req.Exclude, n.ID) || slices.Contains(req.Keep, n.ID) {
		return false
	}
	if len(req.Requisite) == 0 {
		return true
	}
	for _, segs := range req.Requisite {
		all := true
		for k, v := range segs {
			if got, ok := n.Labels[k]; !ok || got != v {
				all = false
			}
		}
		if all {
			return true
		}
	}
	return false
}

func cloneNodes(nodes []Node) []Node {
	out := make([]Node, len(nodes))
	for i, n := range nodes {
		n.Labels = cloneMap(n.Labels)
		out[i] = n
	}
	return out
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func cloneRequest(r Request) Request {
	r.Exclude = slices.Clone(r.Exclude)
	r.Keep = slices.Clone(r.Keep)
	clone := func(ts []map[string]string) []map[string]string {
		if ts == nil {
			return nil
		}
		out := make([]map[string]string, len(ts))
		for i, m := range ts {
			out[i] = cloneMap(m)
		}
		return out
	}
	r.Requisite = clone(r.Requisite)
	r.Preferred = clone(r.Preferred)
	return r
}

func distinct(vals []string) int {
	seen := make(map[string]bool)
	for _, v := range vals {
		seen[v] = true
	}
	return len(seen)
}

func TestPlace_Properties(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		nodes := genNodes(t)
		req := genRequest(t, rapid.Bool().Draw(t, "withKeep"))
		nodesBefore, reqBefore := cloneNodes(nodes), cloneRequest(req)

		got, err := Place(nodes, req)

		// Inputs are untouched.
		must.Eq(t, nodesBefore, nodes)
		must.Eq(t, reqBefore, req)

		byID := make(map[string]Node)
		var eligible []Node
		for _, n := range nodes {
			byID[n.ID] = n
			if qualifies(n, req) {
				eligible = append(eligible, n)
			}
		}

		// Deterministic: another order of the same nodes, same answer.
		again, errAgain := Place(rapid.Permutation(nodes).Draw(t, "shuffled"), req)
		must.Eq(t, got, again)
		must.Eq(t, fmt.Sprint(err), fmt.Sprint(errAgain))

		if len(eligible) < req.Replicas {
			must.Nil(t, got)
			var short *ShortfallError
			must.True(t, errors.As(err, &short), must.Sprintf("err = %v", err))
			must.Eq(t, req.Replicas, short.Wanted)
			must.Eq(t, len(eligible), short.Eligible)
			// Exactly the nodes that do not qualify carry a reason.
			must.Eq(t, len(nodes)-len(eligible), len(short.Rejected))
			for id, why := range short.Rejected {
				must.NotEq(t, "", why)
				must.False(t, qualifies(byID[id], req), must.Sprintf("%s rejected (%s) but qualifies", id, why))
			}
			return
		}
		must.NoError(t, err)
		must.Len(t, req.Replicas, got)

		// Never two replicas on one node; never an excluded or kept node;
		// every chosen node passes the filter.
		must.Eq(t, len(got), distinct(got))
		for _, id := range got {
			must.SliceNotContains(t, req.Exclude, id)
			must.SliceNotContains(t, req.Keep, id)
			must.True(t, qualifies(byID[id], req), must.Sprintf("%s chosen but does not qualify", id))
		}

		checkSpread(t, nodes, eligible, req, got)
	})
}

// TestPlace_SpreadProperties draws only placements that succeed (healthy
// nodes, a zero size, no requisite, nothing excluded), so every run exercises the
// spread and scoring of the choose step.
func TestPlace_SpreadProperties(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		nodes := genNodes(t)
		for i := range nodes {
			nodes[i].Healthy, nodes[i].Draining, nodes[i].DownSince = true, false, time.Time{}
			nodes[i].FreeBytes = max(nodes[i].FreeBytes, 0)
		}
		req := Request{
			Volume:    "v",
			Replicas:  rapid.IntRange(1, len(nodes)).Draw(t, "replicas"),
			Spread:    rapid.SampledFrom([]string{"rack", "zone", ""}).Draw(t, "spread"),
			Preferred: genTopologies(t, "preferred"),
		}
		got, err := Place(nodes, req)
		must.NoError(t, err)
		must.Len(t, req.Replicas, got)
		must.Eq(t, len(got), distinct(got))
		checkSpread(t, nodes, nodes, req, got)
	})
}

// checkSpread asserts that got spreads as widely as the eligible nodes
// allow: the new replicas open as many failure domains not used by kept
// holders as there are (up to the replicas asked), and no domain gets a
// second replica more than another unless that other has no eligible node
// left.
func checkSpread(t *rapid.T, nodes, eligible []Node, req Request, got []string) {
	t.Helper()
	if req.Spread == "" {
		return
	}
	byID := make(map[string]Node)
	for _, n := range nodes {
		byID[n.ID] = n
	}
	used := make(map[string]int) // domain -> replicas: kept plus chosen
	for _, id := range slices.Compact(slices.Sorted(slices.Values(req.Keep))) {
		if n, ok := byID[id]; ok {
			used[n.Labels[req.Spread]]++
		}
	}
	keptDomains := make(map[string]bool)
	for d := range used {
		keptDomains[d] = true
	}
	fresh := make(map[string]bool)
	left := make(map[string]int) // domain -> eligible nodes not chosen
	for _, n := range eligible {
		d := n.Labels[req.Spread]
		if !keptDomains[d] {
			fresh[d] = true
		}
		if !slices.Contains(got, n.ID) {
			left[d]++
		}
	}
	var opened []string
	for _, id := range got {
		d := byID[id].Labels[req.Spread]
		used[d]++
		if !keptDomains[d] {
			opened = append(opened, d)
		}
	}
	must.Eq(t, min(req.Replicas, len(fresh)), distinct(opened),
		must.Sprintf("chosen %v opened domains %v of %v", got, opened, fresh))
	if len(req.Keep) == 0 {
		var all []string
		for _, n := range eligible {
			all = append(all, n.Labels[req.Spread])
		}
		must.Eq(t, min(req.Replicas, distinct(all)), distinct(labelsOf(nodes, got, req.Spread)))
	}
	// Balanced: a domain that still has eligible nodes never trails a domain
	// that received a new replica by two or more.
	for _, id := range got {
		d := byID[id].Labels[req.Spread]
		for other, n := range left {
			if n > 0 {
				must.Less(t, used[other]+2, used[d], must.Sprintf("domain %q has %d replicas while %q, with %d nodes left, has %d", d, used[d], other, n, used[other]))
			}
		}
	}
}

func genVolumes(t *rapid.T) []VolumeState {
	// Volume names are unique, as they are in Consul's KV.
	names := rapid.SliceOfNDistinct(rapid.SampledFrom([]string{"pg", "redis", "mongo", "etcd", "kafka"}), 0, 4, rapid.ID[string]).Draw(t, "volumes")
	vols := make([]VolumeState, len(names))
	for i := range vols {
		label := names[i]
		vols[i] = VolumeState{
			Volume:    names[i],
			SizeBytes: int64(rapid.IntRange(0, 4).Draw(t, label+"-size")) * GiB,
			Replicas:  rapid.IntRange(1, 4).Draw(t, label+"-replicas"),
			Spread:    rapid.SampledFrom([]string{"", "rack", "zone"}).Draw(t, label+"-spread"),
			Requisite: genTopologies(t, label+"-requisite"),
			Holders:   rapid.SliceOfN(rapid.SampledFrom([]string{"n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9", "gone"}), 0, 4).Draw(t, label+"-holders"),
		}
	}
	return vols
}

func TestPlanReplacements_Properties(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		nodes := genNodes(t)
		vols := genVolumes(t)
		byID := make(map[string]Node)
		for _, n := range nodes {
			byID[n.ID] = n
		}
		isLost := func(id string) bool {
			n, ok := byID[id]
			return !ok || (!n.Healthy && !n.DownSince.IsZero() && propNow.Sub(n.DownSince) > propGrace)
		}

		plan := PlanReplacements(nodes, vols, propNow, propGrace)

		// Deterministic: shuffled nodes, volumes and holders, same plan.
		shuffledVols := rapid.Permutation(vols).Draw(t, "shuffledVols")
		for i := range shuffledVols {
			shuffledVols[i].Holders = rapid.Permutation(shuffledVols[i].Holders).Draw(t, fmt.Sprintf("shuffledHolders%d", i))
		}
		again := PlanReplacements(rapid.Permutation(nodes).Draw(t, "shuffledNodes"), shuffledVols, propNow, propGrace)
		must.Eq(t, fmt.Sprintf("%+v", plan), fmt.Sprintf("%+v", again))

		booked := make(map[string]int64)
		for _, r := range plan {
			i := slices.IndexFunc(vols, func(v VolumeState) bool { return v.Volume == r.Volume })
			must.NonNegative(t, i, must.Sprintf("replacement %+v names no volume", r))
			vol := vols[i]
			must.SliceContains(t, vol.Holders, r.Lost)
			must.True(t, isLost(r.Lost), must.Sprintf("%s replaced but not lost", r.Lost))
			must.NotEq(t, "", r.Reason)
			switch {
			case r.New != "":
				// Never a current holder.
				must.SliceNotContains(t, vol.Holders, r.New)
				n, ok := byID[r.New]
				must.True(t, ok)
				must.True(t, n.Healthy && !n.Draining)
				must.NoError(t, r.Err)
				must.False(t, r.Surplus)
				booked[r.New] += vol.SizeBytes
			case r.Surplus:
				must.NoError(t, r.Err)
			default:
				must.Error(t, r.Err)
			}
		}
		// The plan never books more space on a node than it has free.
		for id, b := range booked {
			must.LessEq(t, byID[id].FreeBytes, b, must.Sprintf("node %s booked %d of %d free", id, b, byID[id].FreeBytes))
		}
		// Every lost holder appears exactly once, and the new nodes of one
		// volume are distinct.
		for _, v := range vols {
			var lost, planned, news []string
			for _, h := range v.Holders {
				if isLost(h) && !slices.Contains(lost, h) {
					lost = append(lost, h)
				}
			}
			for _, r := range plan {
				if r.Volume == v.Volume {
					planned = append(planned, r.Lost)
					if r.New != "" {
						news = append(news, r.New)
					}
				}
			}
			slices.Sort(lost)
			must.Eq(t, lost, planned)
			must.Eq(t, len(news), distinct(news))
		}
	})
}
