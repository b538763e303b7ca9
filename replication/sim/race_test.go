//go:build race

package sim

import "time"

// Under the race detector the data plane runs several times slower:
// longer replica timeouts keep a slow machine from dropping replicas with
// no fault injected. (The wipe faults used to be left out here: they made
// the race detector report a race on a peer's bitmap, since fixed: writes
// record into the bitmaps of the targets snapshot.)
const (
	raceDetector  = true
	raceTimeout   = 3 * time.Second
	raceNoFaults  = ""
	raceFaultNote = ""
)
