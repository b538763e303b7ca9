// Package testcluster runs real HashiCorp Consul agents for integration
// tests and benchmarks, on loopback addresses only: a single `consul agent
// -dev` where one agent is enough, or a Consul server plus one client
// agent per simulated node, each on its own 127.0.0.x address, where a
// test kills or cuts off a node (StartLayout places the server and each
// client on other addresses, or in network namespaces through a command
// prefix, as e2e/cluster does). Agents never check for updates, and have
// Connect on (dev agents have it anyway; StartLayout turns it on in the
// server), whose CA issues the certificates of every Saddlebag
// connection (internal/connecttls). Options.HCL adds configuration such as
// ACLs, with Options.Token the token the readiness check uses. It also
// provides a TCP proxy a test can
// cut to partition one process from its Consul agent.
//
// The Consul binary comes from SADDLEBAG_CONSUL_BIN (exported by make) or
// from e2e/tools/build.sh, which builds the pinned version once into a
// cache. A test that needs Consul and cannot get one fails; it never
// skips. Every process is stopped by PID in t.Cleanup, also on failure.
//
// It imports no Saddlebag package.
package testcluster
