package units

import (
	"errors"
	"fmt"
	"strconv"

	humanize "github.com/dustin/go-humanize"
)

// ErrSyntax is wrapped by every parse error; ErrTooLarge by those of a
// size above MaxBytes.
var (
	ErrSyntax   = errors.New("invalid size")
	ErrTooLarge = errors.New("size too large")
)

// Forms is the valid form of a size, for error messages.
const Forms = `a number of bytes with an optional unit, like 4096, 256MiB, 10GiB or 10GB (GiB, MiB and KiB are powers of 1024; GB, G, MB, M, kB and k powers of 1000, as Nomad reads them)`

// MaxBytes is the largest size ParseBytes accepts: 8 PiB, 2^53 bytes.
// go-humanize computes in float64, which is exact up to 2^53 and rounds
// above it ("9007199254740993" reads as ...992), so above it a size would
// not mean what it says.
const MaxBytes = 1 << 53

// ParseBytes parses s into a number of bytes exactly as Nomad reads a
// volume spec's capacity (go-humanize's ParseBytes), and refuses sizes
// above MaxBytes.
func ParseBytes(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("%w %q: want %s", ErrSyntax, s, Forms)
	}
	if n > MaxBytes {
		return 0, fmt.Errorf("%w %q: %w (at most 8PiB)", ErrSyntax, s, ErrTooLarge)
	}
	return int64(n), nil
}

// unit is one suffix FormatBytes may print.
type unit struct {
	name string
	size int64
}

// formatUnits are the suffixes FormatBytes prints, largest first, binary before
// decimal; ParseBytes reads each with the same meaning.
var formatUnits = []unit{
	{"EiB", 1 << 60}, {"EB", 1e18},
	{"PiB", 1 << 50}, {"PB", 1e15},
	{"TiB", 1 << 40}, {"TB", 1e12},
	{"GiB", 1 << 30}, {"GB", 1e9},
	{"MiB", 1 << 20}, {"MB", 1e6},
	{"KiB", 1 << 10}, {"kB", 1e3},
}

// FormatBytes prints n in its shortest exact form with one of the units
// ParseBytes reads: "10GiB", "20GB", "1536KiB", "100B". A binary unit wins
// a tie.
func FormatBytes(n int64) string {
	best := strconv.FormatInt(n, 10) + "B"
	if n <= 0 {
		return best
	}
	for _, u := range formatUnits {
		if n%u.size != 0 {
			continue
		}
		if s := strconv.FormatInt(n/u.size, 10) + u.name; len(s) < len(best) {
			best = s
		}
	}
	return best
}
