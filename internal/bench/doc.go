// Package bench measures Saddlebag against the plain local equivalent, side
// by side in one run, and prints `name value` lines (make bench). Timings on
// shared machines are noisy, so each figure is a ratio or difference of two
// measurements taken back to back, with the baseline and the replicated run
// interleaved over several rounds and the median kept. It starts real
// replica server processes (the saddlebag binary's replica command) on
// loopback and drives an in-process engine; the failover section runs
// node and controller processes against a real Consul cluster and goes
// through the CSI calls, as Nomad would.
//
// It may import any Saddlebag package; nothing imports it but cmd.
package bench
