package units

import (
	"errors"
	"testing"

	"github.com/shoenig/test/must"
)

func TestParseBytes(t *testing.T) {
	cases := []struct {
		in   string
		want int64
	}{
		{"4096", 4096}, {"256MiB", 256 << 20}, {"10GiB", 10 << 30}, {"1GB", 1e9},
		{"1.5 GiB", 3 << 29}, {"64k", 64 << 10}, {"2 tib", 2 << 40}, {" 12B ", 12},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			got, err := ParseBytes(c.in)
			must.NoError(t, err)
			must.Eq(t, c.want, got)
		})
	}
	for _, bad := range []string{"", "MiB", "10 parsecs", "1.2.3G", "0.1B", "99999999999PiB", "-5"} {
		t.Run("bad "+bad, func(t *testing.T) {
			_, err := ParseBytes(bad)
			must.True(t, errors.Is(err, ErrSyntax), must.Sprintf("err = %v", err))
		})
	}
}

func TestFormatBytes(t *testing.T) {
	must.Eq(t, "256MiB", FormatBytes(256<<20))
	must.Eq(t, "1536KiB", FormatBytes(1536<<10))
	must.Eq(t, "100B", FormatBytes(100))
}

func FuzzParseBytes(f *testing.F) {
	for _, s := range []string{"4096", "256MiB", "1.5GB", "x", "1e9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseBytes(s)
		if err == nil && n < 0 {
			t.Fatalf("ParseBytes(%q) = %d, negative", s, n)
		}
	})
}
