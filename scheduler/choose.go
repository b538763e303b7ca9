package scheduler

// choose is the last step of placement: it takes up to want distinct nodes
// from cands, best first. Each pick is the candidate whose failure domain
// holds the fewest replicas so far (used, which starts with the domains of
// the kept holders and grows with every pick), then the lowest preferred
// rank, then the highest balance, then the lowest node ID.
//
// Picking the least-used domain every time spreads the replicas as widely
// as the candidates allow: while some domain is still unused, the pick opens
// a new one, so the number of domains used is min(want, domains available)
// when nothing is kept. used is modified.
func choose(cands []scored, want int, used map[string]int) []string {
	taken := make([]bool, len(cands))
	var chosen []string
	for len(chosen) < want {
		best := -1
		for i := range cands {
			if taken[i] {
				continue
			}
			if best < 0 || better(cands[i], cands[best], used) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		taken[best] = true
		used[cands[best].domain]++
		chosen = append(chosen, cands[best].node.ID)
	}
	return chosen
}

// better reports whether a ranks ahead of b given the domains used so far.
// It is a strict total order on candidates with distinct IDs.
func better(a, b scored, used map[string]int) bool {
	if ua, ub := used[a.domain], used[b.domain]; ua != ub {
		return ua < ub
	}
	if a.preferred != b.preferred {
		return a.preferred < b.preferred
	}
	if a.balance != b.balance {
		return a.balance > b.balance
	}
	return a.node.ID < b.node.ID
}
