package leader_test

import (
	"path"
	"strings"
	"testing"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/leader"
)

// hostileNames are names an adversarial caller sends: path syntax, URL
// escapes, empty segments, control characters, and length.
var hostileNames = []string{"", ".", "..", "../victim", "victim/..", "a/b", "/victim", "victim/", "a//b",
	"a..b", "%2F", "victim%2F..%2Fother", "..%2Fvictim", "a\x00b", "a\nb", "\tvictim", "victim\x7f",
	"-lead", ".hidden", "_x", "vïctim", "a b", "a?b", "a#b", "a\\b", strings.Repeat("v", 129)}

func TestValidateNameRefusesHostileNames(t *testing.T) {
	t.Parallel()
	for _, s := range hostileNames {
		err := leader.ValidateName("volume id", s)
		must.ErrorIs(t, err, leader.ErrInvalid, must.Sprintf("name %q", s))
		must.StrContains(t, err.Error(), "volume id")
	}
	for _, s := range []string{"victim", "pg-1", "a.b", "A_1", "h-0123abcd", strings.Repeat("v", 128)} {
		must.NoError(t, leader.ValidateName("volume id", s))
	}
	must.ErrorIs(t, leader.ValidateNodeName("n1/../n2"), leader.ErrInvalid)
}

// checkKeys asserts the layout property for one input: every key built
// from it lies under its own prefix, is one segment there (plus the fixed
// suffixes), is unchanged by path cleaning (what Consul's HTTP layer
// does), and is the name itself only when the name is valid.
func checkKeys(t *testing.T, k leader.Keys, id string) {
	valid := leader.ValidateName("volume id", id) == nil
	for _, c := range []struct{ key, base, suffix string }{
		{k.Volume(id), k.Volumes(), ""},
		{k.Primary(id), k.Volumes(), "/primary"},
		{k.InSync(id), k.Volumes(), "/insync"},
		{k.Node(id), k.Nodes(), ""},
	} {
		rest, ok := strings.CutPrefix(c.key, c.base)
		if !ok {
			t.Fatalf("key %q for %q is outside %q", c.key, id, c.base)
		}
		seg, ok := strings.CutSuffix(rest, c.suffix)
		if !ok || seg == "" || strings.Contains(seg, "/") || seg == "." || seg == ".." {
			t.Fatalf("key %q for %q: segment %q is not exactly one segment", c.key, id, seg)
		}
		if path.Clean("/"+c.key) != "/"+c.key {
			t.Fatalf("key %q for %q changes under path cleaning", c.key, id)
		}
		if valid != (seg == id) {
			t.Fatalf("key %q for %q: valid=%v but segment %q", c.key, id, valid, seg)
		}
		if !valid && !strings.HasPrefix(seg, "~invalid-") {
			t.Fatalf("key %q for invalid %q is not quarantined", c.key, id)
		}
	}
}

func TestKeysStayInsideTheirPrefix(t *testing.T) {
	t.Parallel()
	k, err := leader.NewKeys("")
	must.NoError(t, err)
	for _, s := range hostileNames {
		checkKeys(t, k, s)
	}
	checkKeys(t, k, "victim")
	must.Eq(t, "saddlebag/volumes/victim/primary", k.Primary("victim"))
	for _, p := range []string{"../x/", "a/../b/", "a/./b", "/abs/", "a//b/"} {
		_, err := leader.NewKeys(p)
		must.ErrorIs(t, err, leader.ErrInvalid, must.Sprintf("prefix %q", p))
	}
}

// FuzzVolumeKeys: no id produces a key outside the volume's own prefix
// (make fuzz; seeds in testdata/fuzz/FuzzVolumeKeys).
func FuzzVolumeKeys(f *testing.F) {
	for _, s := range hostileNames {
		f.Add(s)
	}
	k, err := leader.NewKeys("")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, id string) { checkKeys(t, k, id) })
}
