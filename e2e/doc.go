// Package e2e holds Saddlebag's end-to-end tests: a real Consul and Nomad
// cluster of three simulated nodes on this machine (package e2e/cluster),
// driven only through Nomad's and Consul's CLIs and APIs, as an operator
// would. They need root (network namespaces, iptables, mounts) and the
// pinned Consul and Nomad binaries (make builds them; see e2e/tools).
// TestConsulUI also needs Debian's chromium (make deps installs it): it
// opens the cluster's Consul UI in headless Chromium through chromedp
// (browser_test.go), with every connection of Chromium's own switched
// off, and keeps its screenshots ($SADDLEBAG_E2E_ARTIFACTS/consul-ui, or
// a directory it prints).
package e2e
