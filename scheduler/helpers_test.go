package scheduler

import "time"

const (
	MiB = int64(1) << 20
	GiB = int64(1) << 30
)

// up is a healthy node with free bytes and labels given as "k=v" pairs.
func up(id string, free int64, labels ...string) Node {
	n := Node{ID: id, Healthy: true, FreeBytes: free, Labels: map[string]string{}}
	for _, kv := range labels {
		for i := 0; i < len(kv); i++ {
			if kv[i] == '=' {
				n.Labels[kv[:i]] = kv[i+1:]
				break
			}
		}
	}
	return n
}

// down is n marked unhealthy since t.
func down(n Node, t time.Time) Node {
	n.Healthy = false
	n.DownSince = t
	return n
}

func draining(n Node) Node {
	n.Draining = true
	return n
}

func holding(n Node, replicas int) Node {
	n.Replicas = replicas
	return n
}

// labelsOf maps node IDs to the value of label for the nodes in ids.
func labelsOf(nodes []Node, ids []string, label string) []string {
	byID := make(map[string]Node, len(nodes))
	for _, n := range nodes {
		byID[n.ID] = n
	}
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = byID[id].Labels[label]
	}
	return out
}
