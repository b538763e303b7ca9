package scheduler

import (
	"errors"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

// permutations returns every ordering of nodes.
func permutations(nodes []Node) [][]Node {
	if len(nodes) <= 1 {
		return [][]Node{append([]Node(nil), nodes...)}
	}
	var out [][]Node
	for i := range nodes {
		rest := append(append([]Node(nil), nodes[:i]...), nodes[i+1:]...)
		for _, p := range permutations(rest) {
			out = append(out, append([]Node{nodes[i]}, p...))
		}
	}
	return out
}

func TestPlace_SpreadTwoRacks(t *testing.T) {
	t.Parallel()
	// The acceptance case: racks a, a, b and two replicas always
	// get one replica per rack, whichever node is roomiest or emptiest and
	// in whatever order the nodes arrive.
	layouts := []struct {
		name  string
		nodes []Node
	}{
		{"equal", []Node{up("n1", 10*GiB, "rack=a"), up("n2", 10*GiB, "rack=a"), up("n3", 10*GiB, "rack=b")}},
		{"rack a roomier", []Node{up("n1", 100*GiB, "rack=a"), up("n2", 90*GiB, "rack=a"), up("n3", 10*GiB, "rack=b")}},
		{"rack b busier", []Node{up("n1", 10*GiB, "rack=a"), up("n2", 10*GiB, "rack=a"), holding(up("n3", 10*GiB, "rack=b"), 40)}},
		{"rack b last by ID", []Node{up("a1", 10*GiB, "rack=a"), up("a2", 10*GiB, "rack=a"), up("z9", 10*GiB, "rack=b")}},
	}
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			var first []string
			for _, nodes := range permutations(l.nodes) {
				got, err := Place(nodes, Request{Volume: "pg", SizeBytes: GiB, Replicas: 2, Spread: "rack"})
				must.NoError(t, err)
				must.Len(t, 2, got)
				must.SliceContainsAll(t, []string{"a", "b"}, labelsOf(nodes, got, "rack"))
				if first == nil {
					first = got
				}
				must.Eq(t, first, got, must.Sprint("order of nodes changed the placement"))
			}
		})
	}
}

func TestPlace_Spread(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		nodes    []Node
		replicas int
		spread   string
		want     []string
	}{
		{
			name:     "three racks, three replicas",
			nodes:    []Node{up("n1", GiB, "rack=a"), up("n2", GiB, "rack=a"), up("n3", GiB, "rack=b"), up("n4", GiB, "rack=b"), up("n5", GiB, "rack=c")},
			replicas: 3,
			spread:   "rack",
			want:     []string{"n1", "n3", "n5"},
		},
		{
			name: "more replicas than racks fills the least used rack",
			// Rack a has the roomiest nodes, but after a, b, c the fourth
			// replica must not make a hold three while c holds one.
			nodes:    []Node{up("a1", 9*GiB, "rack=a"), up("a2", 9*GiB, "rack=a"), up("a3", 9*GiB, "rack=a"), up("b1", GiB, "rack=b"), up("b2", GiB, "rack=b"), up("c1", GiB, "rack=c")},
			replicas: 5,
			spread:   "rack",
			want:     []string{"a1", "b1", "c1", "a2", "b2"},
		},
		{
			name:     "unlabelled nodes count as one domain",
			nodes:    []Node{up("n1", 9*GiB), up("n2", 9*GiB), up("n3", GiB, "rack=a")},
			replicas: 2,
			spread:   "rack",
			want:     []string{"n1", "n3"},
		},
		{
			name:     "no spread label: roomiest first",
			nodes:    []Node{up("n1", GiB, "rack=a"), up("n2", 5*GiB, "rack=a"), up("n3", 3*GiB, "rack=b")},
			replicas: 2,
			want:     []string{"n2", "n3"},
		},
		{
			name:     "spread by zone, not rack",
			nodes:    []Node{up("n1", 9*GiB, "rack=a", "zone=z1"), up("n2", 8*GiB, "rack=b", "zone=z1"), up("n3", GiB, "rack=a", "zone=z2")},
			replicas: 2,
			spread:   "zone",
			want:     []string{"n1", "n3"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Place(tc.nodes, Request{Volume: "v", Replicas: tc.replicas, Spread: tc.spread})
			must.NoError(t, err)
			must.Eq(t, tc.want, got)
		})
	}
}

func TestPlace_ShortfallNamesUnhealthyNode(t *testing.T) {
	t.Parallel()
	// The acceptance case: three replicas, two healthy nodes.
	nodes := []Node{
		up("n1", 10*GiB, "rack=a"),
		up("n2", 10*GiB, "rack=a"),
		down(up("n3", 10*GiB, "rack=b"), time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)),
	}
	got, err := Place(nodes, Request{Volume: "pg", SizeBytes: GiB, Replicas: 3, Spread: "rack"})
	must.Nil(t, got)
	must.ErrorIs(t, err, ErrShortfall)
	must.False(t, errors.Is(err, ErrInvalid))
	var short *ShortfallError
	must.True(t, errors.As(err, &short))
	must.Eq(t, &ShortfallError{Volume: "pg", Wanted: 3, Eligible: 2, Rejected: map[string]string{"n3": "unhealthy"}}, short)
	must.EqError(t, err, `volume "pg": wants 3 replicas on distinct nodes, only 2 nodes qualify; rejected: n3 (unhealthy)`)
}

func TestShortfallError_Message(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		err  *ShortfallError
		want string
	}{
		{
			name: "reasons sorted by node ID",
			err: &ShortfallError{Volume: "db", Wanted: 2, Eligible: 1, Rejected: map[string]string{
				"n4": "needs 10GiB, has 2GiB free",
				"n2": "draining",
				"n3": "topology: zone=b not in requisite [zone=a]",
				"n1": "excluded",
			}},
			want: `volume "db": wants 2 replicas on distinct nodes, only 1 node qualifies; rejected: n1 (excluded); n2 (draining); n3 (topology: zone=b not in requisite [zone=a]); n4 (needs 10GiB, has 2GiB free)`,
		},
		{
			name: "no nodes at all",
			err:  &ShortfallError{Volume: "db", Wanted: 1},
			want: `volume "db": wants 1 replica on distinct nodes, only 0 nodes qualify; no storage nodes are known`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			must.Eq(t, tc.want, tc.err.Error())
		})
	}
}

func TestPlace_EveryFilterReasonInShortfall(t *testing.T) {
	t.Parallel()
	nodes := []Node{
		up("ok", 20*GiB, "zone=a"),
		down(up("sick", 20*GiB, "zone=a"), time.Unix(100, 0)),
		draining(up("drain", 20*GiB, "zone=a")),
		up("small", 2*GiB, "zone=a"),
		up("far", 20*GiB, "zone=b"),
		up("ex", 20*GiB, "zone=a"),
	}
	_, err := Place(nodes, Request{
		Volume:    "v",
		SizeBytes: 10 * GiB,
		Replicas:  2,
		Requisite: []map[string]string{{"zone": "a"}},
		Exclude:   []string{"ex"},
	})
	var short *ShortfallError
	must.True(t, errors.As(err, &short))
	must.Eq(t, 1, short.Eligible)
	must.Eq(t, map[string]string{
		"sick":  "unhealthy",
		"drain": "draining",
		"small": "needs 10GiB, has 2GiB free",
		"far":   "topology: zone=b not in requisite [zone=a]",
		"ex":    "excluded",
	}, short.Rejected)
}

func TestPlace_Preferred(t *testing.T) {
	t.Parallel()
	nodes := []Node{
		up("n1", 50*GiB, "zone=a", "rack=a1"),
		up("n2", 10*GiB, "zone=b", "rack=b1"),
		up("n3", 20*GiB, "zone=c", "rack=c1"),
		up("n4", 30*GiB, "zone=c", "rack=c2"),
	}
	cases := []struct {
		name      string
		replicas  int
		spread    string
		preferred []map[string]string
		want      []string
	}{
		{name: "none: roomiest first", replicas: 2, want: []string{"n1", "n4"}},
		{name: "preferred beats free space", replicas: 1, preferred: []map[string]string{{"zone": "b"}}, want: []string{"n2"}},
		{
			name:      "in order of preference",
			replicas:  3,
			preferred: []map[string]string{{"zone": "b"}, {"zone": "c"}},
			want:      []string{"n2", "n4", "n3"},
		},
		{
			name:      "all segments must match",
			replicas:  1,
			preferred: []map[string]string{{"zone": "c", "rack": "c1"}},
			want:      []string{"n3"},
		},
		{
			name:      "spread beats preference",
			replicas:  2,
			spread:    "zone",
			preferred: []map[string]string{{"zone": "c"}},
			want:      []string{"n4", "n1"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Place(nodes, Request{Volume: "v", Replicas: tc.replicas, Spread: tc.spread, Preferred: tc.preferred})
			must.NoError(t, err)
			must.Eq(t, tc.want, got)
		})
	}
}

func TestPlace_Balance(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		nodes []Node
		want  []string
	}{
		{
			name:  "more free space first",
			nodes: []Node{up("n1", 10*GiB), up("n2", 30*GiB), up("n3", 20*GiB)},
			want:  []string{"n2", "n3", "n1"},
		},
		{
			name:  "fewer replicas first",
			nodes: []Node{holding(up("n1", 10*GiB), 4), holding(up("n2", 10*GiB), 0), holding(up("n3", 10*GiB), 2)},
			want:  []string{"n2", "n3", "n1"},
		},
		{
			name: "an empty node beats a slightly roomier full one",
			// n1: 100% of max free, 10 of 10 replicas -> 1.0
			// n2: 90% of max free, 0 replicas -> 1.9
			nodes: []Node{holding(up("n1", 100*GiB), 10), up("n2", 90*GiB), holding(up("n3", 10*GiB), 5)},
			want:  []string{"n2", "n1", "n3"},
		},
		{
			name:  "ties broken by node ID",
			nodes: []Node{up("c", GiB), up("a", GiB), up("b", GiB)},
			want:  []string{"a", "b", "c"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Place(tc.nodes, Request{Volume: "v", SizeBytes: GiB, Replicas: 3})
			must.NoError(t, err)
			must.Eq(t, tc.want, got)
		})
	}
}

func TestPlace_Exclusions(t *testing.T) {
	t.Parallel()
	nodes := []Node{up("n1", 30*GiB, "rack=a"), up("n2", 20*GiB, "rack=b"), up("n3", 10*GiB, "rack=c")}
	cases := []struct {
		name     string
		exclude  []string
		keep     []string
		replicas int
		want     []string
		short    map[string]string // nil = no shortfall
	}{
		{name: "excluded roomiest node", exclude: []string{"n1"}, replicas: 2, want: []string{"n2", "n3"}},
		{name: "unknown IDs ignored", exclude: []string{"zz", "n2"}, replicas: 1, want: []string{"n1"}},
		{
			name:     "exclusion causes shortfall",
			exclude:  []string{"n1", "n3"},
			replicas: 2,
			short:    map[string]string{"n1": "excluded", "n3": "excluded"},
		},
		{
			name:     "kept holder is not chosen again",
			keep:     []string{"n1"},
			replicas: 1,
			want:     []string{"n2"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Place(nodes, Request{Volume: "v", Replicas: tc.replicas, Spread: "rack", Exclude: tc.exclude, Keep: tc.keep})
			if tc.short != nil {
				var short *ShortfallError
				must.True(t, errors.As(err, &short))
				must.Eq(t, tc.short, short.Rejected)
				return
			}
			must.NoError(t, err)
			must.Eq(t, tc.want, got)
		})
	}
}

func TestPlace_KeepSpreadsAwayFromHolders(t *testing.T) {
	t.Parallel()
	// The kept holder is in rack a; the roomiest candidate is also in rack
	// a, so the new replica goes to rack b instead.
	nodes := []Node{up("h", GiB, "rack=a"), up("a2", 90*GiB, "rack=a"), up("b1", GiB, "rack=b")}
	got, err := Place(nodes, Request{Volume: "v", Replicas: 1, Spread: "rack", Keep: []string{"h"}})
	must.NoError(t, err)
	must.Eq(t, []string{"b1"}, got)

	// Without Keep the roomiest wins: the test above is not vacuous.
	got, err = Place(nodes, Request{Volume: "v", Replicas: 1, Spread: "rack", Exclude: []string{"h"}})
	must.NoError(t, err)
	must.Eq(t, []string{"a2"}, got)
}

func TestPlace_Invalid(t *testing.T) {
	t.Parallel()
	ok := []Node{up("n1", GiB), up("n2", GiB)}
	cases := []struct {
		name  string
		nodes []Node
		req   Request
	}{
		{name: "zero replicas", nodes: ok, req: Request{Replicas: 0}},
		{name: "negative replicas", nodes: ok, req: Request{Replicas: -1}},
		{name: "negative size", nodes: ok, req: Request{Replicas: 1, SizeBytes: -1}},
		{name: "node without ID", nodes: []Node{up("", GiB)}, req: Request{Replicas: 1}},
		{name: "duplicate node ID", nodes: []Node{up("n1", GiB), up("n1", 2*GiB)}, req: Request{Replicas: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Place(tc.nodes, tc.req)
			must.Nil(t, got)
			must.ErrorIs(t, err, ErrInvalid)
			must.False(t, errors.Is(err, ErrShortfall))
		})
	}
}

func TestPlace_DoesNotModifyInputs(t *testing.T) {
	t.Parallel()
	nodes := []Node{up("b", GiB, "rack=a"), up("a", 2*GiB, "rack=b"), draining(up("c", GiB))}
	req := Request{Volume: "v", Replicas: 2, Spread: "rack", Exclude: []string{"z", "c"}, Keep: []string{"y"},
		Preferred: []map[string]string{{"rack": "b"}}}
	wantNodes := []Node{up("b", GiB, "rack=a"), up("a", 2*GiB, "rack=b"), draining(up("c", GiB))}
	wantReq := Request{Volume: "v", Replicas: 2, Spread: "rack", Exclude: []string{"z", "c"}, Keep: []string{"y"},
		Preferred: []map[string]string{{"rack": "b"}}}
	_, err := Place(nodes, req)
	must.NoError(t, err)
	must.Eq(t, wantNodes, nodes)
	must.Eq(t, wantReq, req)
}
