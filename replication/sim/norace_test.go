//go:build !race

package sim

import "time"

const (
	raceDetector  = false
	raceTimeout   = time.Duration(0)
	raceNoFaults  = ""
	raceFaultNote = ""
)
