package scheduler

// scored is an eligible node with the part of its worth that does not depend
// on which other nodes are chosen. Spread, which does, is choose's business.
type scored struct {
	node Node
	// domain is the node's value of the request's Spread label ("" when
	// the node lacks it: all unlabelled nodes count as one domain, since
	// nothing says they fail apart).
	domain string
	// preferred is the index of the first preferred topology the node
	// matches, or len(Request.Preferred) when it matches none: lower is
	// better.
	preferred int
	// balance is in [0, 2]: the node's free space relative to the
	// roomiest eligible node, plus how few replicas it holds relative to
	// the busiest one. Higher is better.
	balance float64
}

// score is the second step of placement: it rates every eligible node. The
// result is in the order of eligible.
func score(eligible []Node, req Request) []scored {
	var maxFree int64
	maxReplicas := 0
	for _, n := range eligible {
		maxFree = max(maxFree, n.FreeBytes)
		maxReplicas = max(maxReplicas, n.Replicas)
	}
	out := make([]scored, len(eligible))
	for i, n := range eligible {
		out[i] = scored{
			node:      n,
			domain:    domainOf(n, req.Spread),
			preferred: preferredRank(n.Labels, req.Preferred),
			balance:   ratio(n.FreeBytes, maxFree) + 1 - ratio(int64(max(n.Replicas, 0)), int64(maxReplicas)),
		}
	}
	return out
}

// domainOf is n's value of the spread label, "" with no spread label or
// when n lacks it.
func domainOf(n Node, spread string) string {
	if spread == "" {
		return ""
	}
	return n.Labels[spread]
}

// preferredRank is the index of the first entry of preferred that labels
// match, or len(preferred) when none does.
func preferredRank(labels map[string]string, preferred []map[string]string) int {
	for i, segs := range preferred {
		if matches(labels, segs) {
			return i
		}
	}
	return len(preferred)
}

// ratio is v/limit clamped to [0, 1]; 1 when limit <= 0 (every value is
// the best there is).
func ratio(v, limit int64) float64 {
	if limit <= 0 {
		return 1
	}
	if v <= 0 {
		return 0
	}
	return min(float64(v)/float64(limit), 1)
}
