package sim

import (
	"fmt"
	"slices"
	"strings"
)

// Fault is a class of fault a schedule may inject.
type Fault string

// The fault classes.
const (
	FaultKill           Fault = "kill"           // replica SIGKILL (and restart)
	FaultPowerLoss      Fault = "powerloss"      // replica power loss: unsynced writes lost
	FaultWipe           Fault = "wipe"           // replica directory wiped (new disk)
	FaultPartition      Fault = "partition"      // replica cut off from every primary
	FaultDelay          Fault = "delay"          // per-connection latency: reordering across connections
	FaultHold           Fault = "hold"           // frames held for a while, then delivered
	FaultDiskFull       Fault = "diskfull"       // replica disk full (ENOSPC)
	FaultPrimaryCrash   Fault = "primarycrash"   // primary crash, then promotion
	FaultSecondPrimary  Fault = "secondprimary"  // a new primary while the old one still runs
	FaultRecordLost     Fault = "recordlost"     // in-sync record deleted
	FaultRecordRollback Fault = "recordrollback" // in-sync record rolled back to an older value
	FaultLockReset      Fault = "lockreset"      // Consul lock index reset (epochs go back)
	FaultConsulBlip     Fault = "consulblip"     // in-sync record writes fail for a while
	// FaultWipeFailover crashes the primary, wipes a replica (a new disk,
	// so the record still names it) and promotes a new primary.
	FaultWipeFailover Fault = "wipefailover"
	// FaultPromotionFault crashes the primary and, while the next one is
	// being promoted, kills or power-cuts a replica.
	FaultPromotionFault Fault = "promotionfault"
	// FaultResyncPowerLoss power-cuts a replica while it is being
	// resynced (restarting a replica first, to start a resync, when none
	// is).
	FaultResyncPowerLoss Fault = "resyncpowerloss"
	// FaultPersistCrash arms a power cut of a replica right after one of
	// its next writes to a persisted peer bitmap or to its metadata
	// (epoch, activity log), before that write's fsync.
	FaultPersistCrash Fault = "persistcrash"
	// FaultAllDown lets the replica faults (kill, power loss, wipe,
	// partition, hold, disk full) impair every replica at once; disabled,
	// the schedule always leaves one replica healthy.
	FaultAllDown Fault = "alldown"
)

// AllFaults lists every fault class.
var AllFaults = []Fault{FaultKill, FaultPowerLoss, FaultWipe, FaultPartition, FaultDelay, FaultHold, FaultDiskFull,
	FaultPrimaryCrash, FaultSecondPrimary, FaultRecordLost, FaultRecordRollback, FaultLockReset, FaultConsulBlip, FaultAllDown, FaultWipeFailover,
	FaultPromotionFault, FaultResyncPowerLoss, FaultPersistCrash}

// FaultSet is the set of enabled fault classes.
type FaultSet map[Fault]bool

// ParseFaults reads a fault spec: "" or "all" enables every class, "none"
// none (only the workload and the final recovery); a list
// of names enables only those; names prefixed with '-' disable a class
// from all (or from the list given before them), e.g. "-powerloss,-wipe".
func ParseFaults(spec string) (FaultSet, error) {
	set := FaultSet{}
	parts := strings.FieldsFunc(spec, func(r rune) bool { return r == ',' || r == ' ' })
	onlyRemovals := !slices.Contains(parts, "none")
	for _, p := range parts {
		if !strings.HasPrefix(p, "-") && p != "all" && p != "none" {
			onlyRemovals = false
		}
	}
	if onlyRemovals {
		for _, f := range AllFaults {
			set[f] = true
		}
	}
	for _, p := range parts {
		name, on := strings.TrimPrefix(p, "-"), !strings.HasPrefix(p, "-")
		if name == "all" {
			continue
		}
		if name == "none" {
			clear(set)
			continue
		}
		if !slices.Contains(AllFaults, Fault(name)) {
			return nil, fmt.Errorf("unknown fault class %q (known: %v)", name, AllFaults)
		}
		set[Fault(name)] = on
	}
	return set, nil
}

// String lists the enabled classes.
func (s FaultSet) String() string {
	var on []string
	for _, f := range AllFaults {
		if s[f] {
			on = append(on, string(f))
		}
	}
	if len(on) == 0 {
		return "none"
	}
	return strings.Join(on, ",")
}
