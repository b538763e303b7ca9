// Command devcluster runs the local demo cluster behind `make dev` and
// `make dev-down`: the same three-node Consul + Nomad cluster the
// end-to-end tests use (package e2e/cluster), started detached so that it
// outlives this command, and torn down later from its state file.
//
//	devcluster up      start it (or show the one already running)
//	devcluster status  show it
//	devcluster failover  SIGKILL the node under Postgres; print the failover
//	                   step by step (e2e/cluster/timeline) and failover_seconds
//	devcluster down    tear it down: every process, namespace, mount and rule
//
// It only wires flags to package e2e/cluster; the cluster logic lives there.
package main
