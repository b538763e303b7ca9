// Package statusapi serves an engine's status as JSON over HTTP
// (GET /v1/status) and reads it back for `saddlebag status`, so operators can
// see in-sync replicas, resync progress (percent, bytes, rate, ETA) and
// fencing of a running primary.
//
// It imports replication for the status type only.
package statusapi
