package scheduler

import "time"

// Node is one storage node as the controller sees it (from Consul's node
// records and health).
type Node struct {
	ID        string            // node name; unique within a snapshot
	Healthy   bool              // its Consul checks pass
	Draining  bool              // the operator is emptying it: it takes no new replicas
	FreeBytes int64             // space left for new replicas
	Labels    map[string]string // failure-domain labels (rack, zone, ...) and topology segments
	Replicas  int               // replicas it already holds
	DownSince time.Time         // zero while healthy; when it was first seen unhealthy
}

// Request asks for replicas of a new volume.
type Request struct {
	Volume    string
	SizeBytes int64
	Replicas  int                 // how many nodes to choose; at least 1
	Spread    string              // label to spread across (e.g. "rack"); "" = no spread
	Requisite []map[string]string // topology requirements: a node qualifies if its labels match ALL segments of ANY entry (empty = any node)
	Preferred []map[string]string // preferred topologies, in order (score bonus)
	Exclude   []string            // node IDs that must not be chosen (e.g. already hold a replica)

	// Keep lists nodes that already hold a replica of this volume and keep
	// it (re-replication). They are never chosen, and their Spread label
	// values count as used, so new replicas go to other failure domains
	// first. IDs not in the snapshot are ignored for spreading.
	Keep []string
}
