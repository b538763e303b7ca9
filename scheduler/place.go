package scheduler

import "fmt"

// Place returns req.Replicas distinct node IDs for a new volume, best first:
// filter (Filter), score, choose. The replicas are spread over as many
// values of the req.Spread label as the eligible nodes offer; among equals
// it prefers the earliest matching preferred topology, then nodes with more
// free space and fewer replicas, then the lower node ID.
//
// When too few nodes qualify it returns nil and a *ShortfallError (matching
// ErrShortfall) that says, per rejected node, why. A malformed request or
// snapshot returns an error matching ErrInvalid. Place is pure: it neither
// modifies its inputs nor depends on their order.
func Place(nodes []Node, req Request) ([]string, error) {
	chosen, err := place(nodes, req)
	if err != nil {
		return nil, err
	}
	return chosen, nil
}

// place is Place that also returns the nodes it could choose when there are
// too few: re-replication uses as many as there are.
func place(nodes []Node, req Request) ([]string, error) {
	if err := validate(nodes, req); err != nil {
		return nil, err
	}
	eligible, rejected := Filter(nodes, req)
	chosen := choose(score(eligible, req), req.Replicas, keptDomains(nodes, req))
	if len(chosen) < req.Replicas {
		return chosen, &ShortfallError{
			Volume:   req.Volume,
			Wanted:   req.Replicas,
			Eligible: len(eligible),
			Rejected: rejected,
		}
	}
	return chosen, nil
}

// validate rejects requests and snapshots no placement can make sense of.
func validate(nodes []Node, req Request) error {
	if req.Replicas < 1 {
		return fmt.Errorf("%w: volume %q: replicas must be at least 1, got %d", ErrInvalid, req.Volume, req.Replicas)
	}
	if req.SizeBytes < 0 {
		return fmt.Errorf("%w: volume %q: negative size %d", ErrInvalid, req.Volume, req.SizeBytes)
	}
	seen := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		if n.ID == "" {
			return fmt.Errorf("%w: a node has no ID", ErrInvalid)
		}
		if seen[n.ID] {
			return fmt.Errorf("%w: node %q appears twice in the snapshot", ErrInvalid, n.ID)
		}
		seen[n.ID] = true
	}
	return nil
}

// keptDomains counts the kept holders per failure domain; a fresh map, as
// choose adds to it.
func keptDomains(nodes []Node, req Request) map[string]int {
	used := make(map[string]int)
	if req.Spread == "" || len(req.Keep) == 0 {
		return used
	}
	kept := setOf(req.Keep)
	for _, n := range nodes {
		if kept[n.ID] {
			used[domainOf(n, req.Spread)]++
		}
	}
	return used
}
