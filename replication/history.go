package replication

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// Which replicas are current: the history every replica carries.
//
// Every change of a volume's in-sync set gets the next generation number.
// The primary writes the new set and its generation durably to every
// member (wire.FrameMembership) BEFORE it records them through the InSyncHook
// (Consul), and no write that depends on the change completes before both
// are done. So:
//
//   - a member of the newest set holds that generation; every replica
//     that holds an older one (dropped, restored from a backup, wiped and
//     created again with generation 0) is stale, whatever anyone's memory
//     says, and is never served from;
//   - the recorded set (Consul) is the newest one, or one generation
//     behind the members when a primary died between writing them and
//     Consul; a record behind a replica's own view may also have been
//     rolled back (a Consul snapshot restored), by any number of
//     generations;
//   - so a record at least as new as every reachable replica is used as
//     is; when it is older, or missing, the replicas' newest view is used,
//     but only when every member of it is reachable (a member that is not
//     might hold a still newer generation after dropping the reachable
//     ones). Otherwise the volume stays offline with ErrHistoryUnknown
//     naming the replicas it waits for. A record rolled back to exactly
//     the generation the reachable replicas hold, while every holder of a
//     newer one is unreachable, cannot be told from a current one: the
//     README says what an operator restoring Consul does.
//
// This is DRBD's data generation scheme (current UUID plus history) with a
// counter instead of random identifiers: replicas are only ever written
// by the one primary holding the lease, so a counter is unambiguous.

// ErrHistoryUnknown means the coordination layer's in-sync record is
// missing or older than the replicas' own history, and the replicas that
// could prove which copy is newest are not reachable. Nothing is served
// until they are, or an operator records the in-sync set by hand.
var ErrHistoryUnknown = errors.New("volume history unknown")

// chooseView decides the in-sync set a new primary trusts, from the
// recorded one (nil: none) and the state the reachable replicas reported
// (by address). configured lists every replica of the volume.
func chooseView(recorded *wire.Membership, configured []string, reach map[string]wire.OpenReply) (wire.Membership, string, error) {
	var newest wire.Membership
	for _, addr := range configured {
		if o, ok := reach[addr]; ok && o.Membership.Gen > newest.Gen {
			newest = o.Membership
		}
	}
	if recorded != nil && recorded.Gen >= newest.Gen {
		return *recorded, "recorded", nil
	}
	// The record is gone, or older than a replica's own view: its writer
	// stopped between writing the members and the record, or Consul lost
	// or rolled the record back. Only the replicas can say what is
	// current, and only if every member of the newest view answers.
	why := "no in-sync record"
	if recorded != nil {
		why = fmt.Sprintf("in-sync record at generation %d, a replica at %d: the record's writer stopped before recording, or the record was rolled back", recorded.Gen, newest.Gen)
	}
	var wait []string
	members := newest.Replicas
	if newest.Gen == 0 {
		members = configured // a new volume: all must say they are new
	}
	for _, addr := range members {
		if _, ok := reach[addr]; !ok {
			wait = append(wait, addr)
		}
	}
	if len(wait) > 0 {
		return wire.Membership{}, "", fmt.Errorf("%w: %s; replica(s) %s of the newest known in-sync set (generation %d) are unreachable and may hold newer data: waiting for them (or record the in-sync set by hand, see the README)",
			ErrHistoryUnknown, why, strings.Join(wait, ", "), newest.Gen)
	}
	return newest, "replicas (" + why + ")", nil
}

// current reports whether the replica at addr, which reported o, holds
// everything of view: it is a member of view's generation.
func current(view wire.Membership, addr string, o wire.OpenReply) bool {
	if o.Membership.Gen != view.Gen {
		return false
	}
	return len(view.Replicas) == 0 || slices.Contains(view.Replicas, addr)
}

// describeStale says why a reachable replica is not current, for logs and
// the engine's status.
func describeStale(view wire.Membership, addr string, o wire.OpenReply) string {
	switch {
	case o.Created || (o.Membership.Gen == 0 && view.Gen > 0):
		return fmt.Sprintf("holds no history (new, or its data was lost) but the volume is at generation %d", view.Gen)
	case o.Membership.Gen < view.Gen:
		return fmt.Sprintf("stale: generation %d, the volume is at %d", o.Membership.Gen, view.Gen)
	case !slices.Contains(view.Replicas, addr):
		return fmt.Sprintf("not in the in-sync set of generation %d", view.Gen)
	}
	return fmt.Sprintf("generation %d differs from the volume's %d", o.Membership.Gen, view.Gen)
}
