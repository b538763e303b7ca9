// Package telemetry is what `saddlebag node` and `saddlebag controller`
// export for monitoring: go-metrics (github.com/hashicorp/go-metrics, as
// Nomad and Consul use it) with its Prometheus sink, served at
// GET /v1/metrics?format=prometheus.
//
// Three sources feed one Prometheus registry:
//
//   - go-metrics, for events and process-wide gauges: CSI calls by
//     service, method and gRPC code with their durations, placement
//     failures, and the node's staged volumes, primaries and disk space
//     (set by a sampler every few seconds). Its sink never expires a
//     series, so counters keep counting across quiet minutes.
//   - the running replication engines (replication.RunningEngines),
//     read when the endpoint is scraped: per volume, I/O requests, bytes,
//     errors and latency histograms by op (read, write, flush, trim), in
//     sync / resyncing / served / wanted replica counts, resync bytes
//     remaining and rate, lease holds, fencings and replica drops. The
//     engines count with atomics on their I/O path and nothing else; a
//     volume's series exist exactly while this process is its primary,
//     so no stale value lingers after the primary moves. Counters include
//     the engines closed before (replication.RetiredTotals), so they
//     never go back while the process lives.
//   - the Go runtime and process collectors (go_*, process_*).
//
// Metric names are the constants in names.go; the Grafana dashboard in
// dashboards/ queries only those (its test scrapes real processes).
//
// Of Saddlebag's packages it imports only replication (for the engines).
package telemetry
