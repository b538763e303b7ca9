// Package timeline records a failover step by step, for the end-to-end
// tests and `make dev-failover` (e2e/cmd/devcluster): from the fault
// (T0) until the workload answers again, every source that says when a
// step happened, read from the outside as an operator could: Nomad's
// node status, allocations and the volume's claims, Consul's view of the
// node and of the volume's primary lock, and the Saddlebag processes'
// logs in the cluster's directory (e2e/cluster's layout). The figures the
// tests print (nomad_node_down_seconds, ...) are read from it.
//
// It imports none of Saddlebag's packages (internal/layering enforces
// it): it knows Saddlebag only by its Consul keys and log lines.
package timeline
