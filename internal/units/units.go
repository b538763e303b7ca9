package units

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"
)

var suffixes = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1000,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1000 * 1000,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1000 * 1000 * 1000,
	"t": 1 << 40, "tib": 1 << 40, "tb": 1000 * 1000 * 1000 * 1000,
	"p": 1 << 50, "pib": 1 << 50, "pb": 1000 * 1000 * 1000 * 1000 * 1000,
}

// ErrSyntax is wrapped by every parse error.
var ErrSyntax = errors.New("invalid size")

// ParseBytes parses s into a number of bytes. Fractions are allowed
// ("1.5GiB") when the result is a whole number of bytes.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := suffixes[unit]
	if num == "" || !ok {
		return 0, fmt.Errorf("%w %q: want a number of bytes with an optional unit, like 4096, 256MiB, 10GiB or 1GB", ErrSyntax, s)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%w %q: %q is not a number", ErrSyntax, s, num)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	if !r.IsInt() {
		return 0, fmt.Errorf("%w %q: not a whole number of bytes", ErrSyntax, s)
	}
	if !r.Num().IsInt64() || r.Num().Int64() > math.MaxInt64 {
		return 0, fmt.Errorf("%w %q: too large", ErrSyntax, s)
	}
	return r.Num().Int64(), nil
}

// FormatBytes prints n with the largest binary unit that divides it.
func FormatBytes(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"PiB", 1 << 50}, {"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.size == 0 {
			return fmt.Sprintf("%d%s", n/u.size, u.name)
		}
	}
	return fmt.Sprintf("%dB", n)
}
