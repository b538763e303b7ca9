package leader

import (
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

// A lease must hold I/O well before lock-delay can expire, and confirm
// several times within that bound.
func TestLeaseTimingStaysInsideLockDelay(t *testing.T) {
	for _, ld := range []time.Duration{100 * time.Millisecond, time.Second, 5 * time.Second, 15 * time.Second, 60 * time.Second} {
		t.Run(ld.String(), func(t *testing.T) {
			tm := timingFor(ld)
			must.Less(t, ld, tm.holdAfter)
			must.Positive(t, tm.confirmEvery)
			must.LessEq(t, tm.holdAfter/3, tm.confirmEvery)
			must.Positive(t, tm.retryEvery)
			must.LessEq(t, 250*time.Millisecond, tm.retryEvery)
			must.Eq(t, tm.holdAfter, LeaseHoldAfter(ld))
		})
	}
}
