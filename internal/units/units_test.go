package units

import (
	"errors"
	"testing"

	humanize "github.com/dustin/go-humanize"
	"github.com/shoenig/test/must"
	"pgregory.net/rapid"
)

// Sizes mean what they mean to Nomad: binary suffixes are powers of 1024,
// decimal suffixes and single letters powers of 1000.
func TestParseBytesHasNomadsMeaning(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   string
		want int64
	}{
		{"4096", 4096}, {"256MiB", 256 << 20}, {"10GiB", 10 << 30}, {"10Gi", 10 << 30},
		{"10G", 10e9}, {"10GB", 10e9}, {"10 gb", 10e9}, {"1GB", 1e9}, {"64k", 64e3}, {"64KiB", 64 << 10},
		{"1.5 GiB", 3 << 29}, {"2 tib", 2 << 40}, {"2T", 2e12}, {"12B", 12}, {"1,000", 1000}, {"300MiB", 300 << 20},
		{"1.5", 1}, // a fraction of a byte is dropped, as Nomad drops it
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseBytes(c.in)
			must.NoError(t, err)
			must.Eq(t, c.want, got)
		})
	}
	for _, bad := range []string{"", "MiB", "10 parsecs", "1.2.3G", "-5", " 12B", "20EiB", "9PiB", "1e9"} {
		t.Run("bad "+bad, func(t *testing.T) {
			t.Parallel()
			_, err := ParseBytes(bad)
			must.True(t, errors.Is(err, ErrSyntax), must.Sprintf("err = %v", err))
		})
	}
}

// ParseBytes reads every string exactly as go-humanize (Nomad) does, or
// refuses it; it never reads one differently.
func TestParseBytesIsNomadsParser(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		s := rapid.OneOf(
			rapid.StringMatching(`[0-9]{1,12}(\.[0-9]{1,3})? ?(|b|B|k|K|kB|KB|Ki|KiB|M|MB|Mi|MiB|G|GB|Gi|GiB|T|TB|TiB|P|PiB|E|EiB|x)`),
			rapid.String(),
		).Draw(t, "s")
		got, err := ParseBytes(s)
		want, herr := humanize.ParseBytes(s)
		switch {
		case herr != nil:
			if err == nil {
				t.Fatalf("ParseBytes(%q) = %d, go-humanize refuses it: %v", s, got, herr)
			}
		case want > MaxBytes:
			if err == nil {
				t.Fatalf("ParseBytes(%q) = %d, want too large", s, got)
			}
		case err != nil || uint64(got) != want:
			t.Fatalf("ParseBytes(%q) = %d, %v; go-humanize reads %d", s, got, err, want)
		}
	})
}

func TestFormatBytes(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{
		256 << 20: "256MiB", 1536 << 10: "1536KiB", 100: "100B", 20e9: "20GB", 10 << 30: "10GiB",
		4096: "4KiB", 1000: "1kB", 0: "0B", 300 << 20: "300MiB", 1 << 60: "1EiB", 8 << 50: "8PiB",
	} {
		must.Eq(t, want, FormatBytes(n))
	}
}

// What FormatBytes prints, ParseBytes reads back exactly.
func TestFormatBytesParsesBack(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.OneOf(rapid.Int64Range(1, MaxBytes),
			rapid.Map(rapid.Int64Range(1, 1<<20), func(k int64) int64 { return k << 12 }),
			rapid.Map(rapid.Int64Range(1, 1<<20), func(k int64) int64 { return k * 1e6 }),
		).Draw(t, "n")
		s := FormatBytes(n)
		got, err := ParseBytes(s)
		if err != nil || got != n {
			t.Fatalf("ParseBytes(FormatBytes(%d) = %q) = %d, %v", n, s, got, err)
		}
	})
}

func FuzzParseBytes(f *testing.F) {
	for _, s := range []string{"4096", "256MiB", "1.5GB", "x", "1e9", "10G"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseBytes(s)
		if err == nil && n < 0 {
			t.Fatalf("ParseBytes(%q) = %d, negative", s, n)
		}
	})
}
