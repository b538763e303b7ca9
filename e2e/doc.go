// Package e2e holds Saddlebag's end-to-end tests: a real Consul and Nomad
// cluster of three simulated nodes on this machine (package e2e/cluster),
// driven only through Nomad's and Consul's CLIs and APIs, as an operator
// would. They need root (network namespaces, iptables, mounts) and the
// pinned Consul and Nomad binaries (make builds them; see e2e/tools).
package e2e
