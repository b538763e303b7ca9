package backoff

import (
	"math"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

func TestDelay(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	cases := []struct {
		name                string
		base, ceiling, want time.Duration
		attempt             int
	}{
		{"first failure waits base", 5 * ms, time.Second, 5 * ms, 0},
		{"doubles", 5 * ms, time.Second, 10 * ms, 1},
		{"doubles again", 5 * ms, time.Second, 40 * ms, 3},
		{"capped", 5 * ms, time.Second, time.Second, 8},
		{"just below the cap", 5 * ms, time.Second, 640 * ms, 7},
		{"huge attempt does not overflow", time.Second, time.Minute, time.Minute, math.MaxInt},
		{"negative attempt", 5 * ms, time.Second, 5 * ms, -3},
		{"ceiling below base", time.Second, 5 * ms, 5 * ms, 2},
		{"zero base", 0, time.Second, 0, 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			must.Eq(t, tc.want, Delay(tc.base, tc.ceiling, tc.attempt))
		})
	}
}

// The delay never decreases with the attempt and never exceeds the
// ceiling.
func TestDelayMonotone(t *testing.T) {
	t.Parallel()
	for _, base := range []time.Duration{1, time.Millisecond, 250 * time.Millisecond, 7 * time.Second} {
		prev := time.Duration(0)
		for a := range 80 {
			d := Delay(base, time.Minute, a)
			must.GreaterEq(t, prev, d)
			must.LessEq(t, time.Minute, d)
			prev = d
		}
	}
}
