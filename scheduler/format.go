package scheduler

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// formatBytes renders n in binary units: "10GiB", "1.5MiB", "512B". Whole
// multiples print exactly; otherwise two decimals, rounded up when roundUp
// and down otherwise, with trailing zeros trimmed.
func formatBytes(n int64, roundUp bool) string {
	sign := ""
	u := uint64(n)
	if n < 0 {
		sign = "-"
		u = uint64(-(n + 1)) + 1 // |n|, also for math.MinInt64
		roundUp = !roundUp       // rounding a magnitude the other way keeps the signed bound
	}
	const units = "KMGTPE"
	if u < 1024 {
		return sign + strconv.FormatUint(u, 10) + "B"
	}
	exp, div := 0, uint64(1024)
	for u/div >= 1024 && exp < len(units)-1 {
		div *= 1024
		exp++
	}
	unit := string(units[exp]) + "iB"
	if u%div == 0 {
		return sign + strconv.FormatUint(u/div, 10) + unit
	}
	// hundredths of a unit, exactly: u*100 fits in 128 bits and the
	// quotient is below 1024*100, so Div64 cannot overflow.
	hi, lo := bits.Mul64(u, 100)
	q, r := bits.Div64(hi, lo, div)
	if roundUp && r != 0 {
		q++
	}
	s := fmt.Sprintf("%d.%02d", q/100, q%100)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return sign + s + unit
}
