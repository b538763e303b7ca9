// Package cluster runs a whole Nomad + Consul cluster on one machine for
// the end-to-end tests and the local demo: a Consul server and a Nomad
// server, and three simulated nodes, each in a network namespace of its
// own with its own address, Consul client agent, Nomad client (raw_exec
// enabled for Saddlebag, exec for workloads) and data directory.
//
// Topology. Instance N (1–250, the first free one) owns the subnet
// 198.18.N.0/24 (RFC 2544's benchmarking range, never routed) on a bridge
// sbe2e<N>. Every test host lives in a network namespace the harness
// creates, joined to the bridge by a veth pair: the Consul and Nomad
// servers in sbe2e<N>-srv with address 198.18.N.1, node i in
// sbe2e<N>-node<i> with address 198.18.N.(i+1). Nothing binds an address
// in the root namespace: the bridge's own address there, 198.18.N.254,
// only lets the tests and a browser on this machine reach the servers'
// APIs and UIs and the nodes. Every
// process a node runs (its agents, the tasks its Nomad client starts, the
// Saddlebag processes among them) inherits the namespace, which is what
// attributes a process to a node: killing a node SIGKILLs every process
// in its namespace and nothing else. Loopback addresses alone cannot
// separate nodes: a socket that does not bind its source address talks
// from 127.0.0.1 whichever node it belongs to, so rules on lo cannot tell
// one node's traffic from another's.
//
// A partition drops everything on the node's veth with two iptables rules
// inside the node's own namespace (they cannot touch anything else, and
// die with the namespace); healing deletes them.
//
// Security as in production: Consul runs with ACLs in default-deny mode
// (ConsulManagementToken is the harness's, Nomad's and the agents'
// token), Connect on; DeploySaddlebag creates tokens of the policies
// shipped in jobs/acl, installs the intentions with `saddlebag
// setup-intentions` (operator policy) and passes the node's and the
// controller's tokens to the jobs, so every Saddlebag connection is
// mutual TLS with Connect certificates under those policies.
//
// Nothing probes outside the machine: every agent runs with
// disable_update_check, Nomad clients with the cloud fingerprinters
// denied and AWS_CA_BUNDLE unset (docs/architecture.md, "What we measured about
// Nomad"), and no network but the
// bridge exists inside a node's namespace.
//
// Teardown works from a state file (/run/saddlebag-e2e/<N>.json) that
// records every PID started, with its command line so that a reused PID
// is never signalled, and every namespace, bridge, cgroup and directory
// made (the servers' namespace too). Tests tear down in t.Cleanup, also on failure; `make dev-down`
// tears down the demo cluster from the same file; and Start removes what
// an earlier test process that died without cleaning up left behind.
//
// Of Saddlebag's packages it imports only internal/testcluster (for the
// Consul agents, and its Process, which starts, waits for, stops and kills the
// Nomad agents and the docker form's dockerds too: one implementation of
// process handling) and internal/procstat (the one reader of
// /proc/<pid>/stat, which the descriptor keeper uses too), and of its
// own sub-packages e2e/cluster/image (the docker form's images, which
// ImportImage loads); the product packages (plugin, leader, replication,
// ...) it must not import: it drives Saddlebag as an operator would,
// through Nomad jobs. What the tests read of a failover is
// e2e/cluster/timeline's, which needs nothing of the cluster but its
// clients and directory.
package cluster
