package scheduler

import (
	"fmt"
	"maps"
	"slices"
)

// TopologyNodeKey is the topology segment naming a node. Every node's
// accessible topology is its labels plus this key (NodeSegments), and a
// volume's accessible topology lists exactly those segment sets of the
// nodes holding its replicas: Nomad matches a node only when its segments
// equal one of the volume's, so tasks land on a replica node.
const TopologyNodeKey = "saddlebag.io/node"

// NodeSegments is a node's accessible topology: its labels and its name
// (TopologyNodeKey), so that a requisite naming a node matches it. labels
// is not modified.
func NodeSegments(node string, labels map[string]string) map[string]string {
	seg := maps.Clone(labels)
	if seg == nil {
		seg = map[string]string{}
	}
	seg[TopologyNodeKey] = node
	return seg
}

// PlaceVolume chooses the req.Replicas nodes of a new volume. A topology
// requisite says where the volume must be accessible from (CSI: "from at
// least one of the requisite topologies"), and a volume is accessible
// from each node holding a replica: so one replica goes inside the
// requisite (Place with one replica), and the others are spread freely
// away from it (Place without the requisite, keeping the first). Without
// a requisite it is Place. Errors are Place's; a shortfall for the others
// says which node took the first replica.
func PlaceVolume(nodes []Node, req Request) ([]string, error) {
	if len(req.Requisite) == 0 {
		return Place(nodes, req)
	}
	first := req
	first.Replicas = 1
	chosen, err := Place(nodes, first)
	if err != nil || req.Replicas == 1 {
		return chosen, err
	}
	rest := req
	rest.Replicas, rest.Requisite, rest.Keep = req.Replicas-1, nil, chosen
	more, err := Place(nodes, rest)
	if err != nil {
		return nil, fmt.Errorf("besides node %s in the requisite topology: %w", chosen[0], err)
	}
	return append(chosen, more...), nil
}

// Capacity is the largest volume of req.Replicas replicas that fits now
// within req.Requisite: the free space of the node ranked
// req.Replicas-th by free space among the nodes Filter accepts (a zero
// req.SizeBytes asks for no space), or 0 when fewer nodes qualify.
func Capacity(nodes []Node, req Request) int64 {
	if req.Replicas < 1 {
		return 0
	}
	eligible, _ := Filter(nodes, req)
	if len(eligible) < req.Replicas {
		return 0
	}
	free := make([]int64, 0, len(eligible))
	for _, n := range eligible {
		free = append(free, n.FreeBytes)
	}
	slices.Sort(free)
	slices.Reverse(free)
	return free[req.Replicas-1]
}
