package scheduler

import (
	"math"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

func TestFilter_Reasons(t *testing.T) {
	t.Parallel()
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name string
		node Node
		req  Request
		want string // "" = eligible
	}{
		{name: "eligible", node: up("n1", 10*GiB), req: Request{Replicas: 1, SizeBytes: 10 * GiB}},
		{name: "unhealthy", node: down(up("n1", 10*GiB), since), req: Request{Replicas: 1}, want: "unhealthy"},
		{name: "unhealthy without down time", node: Node{ID: "n1", FreeBytes: GiB}, req: Request{Replicas: 1}, want: "unhealthy"},
		{name: "draining", node: draining(up("n1", 10*GiB)), req: Request{Replicas: 1}, want: "draining"},
		{name: "excluded", node: up("n1", 10*GiB), req: Request{Replicas: 1, Exclude: []string{"n0", "n1"}}, want: "excluded"},
		{name: "kept holder", node: up("n1", 10*GiB), req: Request{Replicas: 1, Keep: []string{"n1"}}, want: "already holds a replica"},
		{
			name: "too small",
			node: up("n1", 2*GiB),
			req:  Request{Replicas: 1, SizeBytes: 10 * GiB},
			want: "needs 10GiB, has 2GiB free",
		},
		{
			name: "one byte short",
			node: up("n1", GiB-1),
			req:  Request{Replicas: 1, SizeBytes: GiB},
			want: "needs 1GiB, has 1023.99MiB free",
		},
		{name: "exactly enough", node: up("n1", GiB), req: Request{Replicas: 1, SizeBytes: GiB}},
		{
			name: "topology mismatch",
			node: up("n1", GiB, "zone=b"),
			req:  Request{Replicas: 1, Requisite: []map[string]string{{"zone": "a"}}},
			want: "topology: zone=b not in requisite [zone=a]",
		},
		{
			name: "topology label missing",
			node: up("n1", GiB, "rack=r1"),
			req:  Request{Replicas: 1, Requisite: []map[string]string{{"zone": "a"}, {"zone": "c", "rack": "r1"}}},
			want: "topology: rack=r1,zone unset not in requisite [zone=a | rack=r1,zone=c]",
		},
		{
			name: "topology needs all segments of one entry",
			node: up("n1", GiB, "zone=a", "rack=r2"),
			req:  Request{Replicas: 1, Requisite: []map[string]string{{"zone": "a", "rack": "r1"}}},
			want: "topology: rack=r2,zone=a not in requisite [rack=r1,zone=a]",
		},
		{
			name: "topology any entry",
			node: up("n1", GiB, "zone=c", "rack=r9"),
			req:  Request{Replicas: 1, Requisite: []map[string]string{{"zone": "a"}, {"zone": "c"}}},
		},
		{
			name: "empty requisite entry admits any node",
			node: up("n1", GiB),
			req:  Request{Replicas: 1, Requisite: []map[string]string{{"zone": "a"}, {}}},
		},
		{
			name: "unhealthy wins over every later check",
			node: draining(down(up("n1", 0, "zone=b"), since)),
			req:  Request{Replicas: 1, SizeBytes: GiB, Exclude: []string{"n1"}, Requisite: []map[string]string{{"zone": "a"}}},
			want: "unhealthy",
		},
		{
			name: "draining before excluded",
			node: draining(up("n1", GiB)),
			req:  Request{Replicas: 1, Exclude: []string{"n1"}},
			want: "draining",
		},
		{
			name: "excluded before topology and space",
			node: up("n1", 0, "zone=b"),
			req:  Request{Replicas: 1, SizeBytes: GiB, Exclude: []string{"n1"}, Requisite: []map[string]string{{"zone": "a"}}},
			want: "excluded",
		},
		{
			name: "topology before space",
			node: up("n1", 0, "zone=b"),
			req:  Request{Replicas: 1, SizeBytes: GiB, Requisite: []map[string]string{{"zone": "a"}}},
			want: "topology: zone=b not in requisite [zone=a]",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			eligible, rejected := Filter([]Node{tc.node}, tc.req)
			must.NotNil(t, rejected)
			if tc.want == "" {
				must.Len(t, 1, eligible)
				must.Eq(t, tc.node.ID, eligible[0].ID)
				must.MapEmpty(t, rejected)
				return
			}
			must.Len(t, 0, eligible)
			must.Eq(t, map[string]string{tc.node.ID: tc.want}, rejected)
		})
	}
}

func TestFilter_SortsEligibleByID(t *testing.T) {
	t.Parallel()
	nodes := []Node{up("c", GiB), down(up("b", GiB), time.Unix(1, 0)), up("a", GiB), up("d", GiB)}
	eligible, rejected := Filter(nodes, Request{Replicas: 1})
	ids := make([]string, len(eligible))
	for i, n := range eligible {
		ids[i] = n.ID
	}
	must.Eq(t, []string{"a", "c", "d"}, ids)
	must.Eq(t, map[string]string{"b": "unhealthy"}, rejected)
}

func TestFormatBytes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		n       int64
		roundUp bool
		want    string
	}{
		{0, false, "0B"},
		{1023, false, "1023B"},
		{1024, false, "1KiB"},
		{1536, false, "1.5KiB"},
		{10 * GiB, false, "10GiB"},
		{GiB - 1, false, "1023.99MiB"},
		{GiB - 1, true, "1024MiB"},
		{GiB + 1, true, "1.01GiB"},
		{GiB + 1, false, "1GiB"},
		{3 * GiB / 2, true, "1.5GiB"},
		{-2 * GiB, false, "-2GiB"},
		{-(GiB + 1), false, "-1.01GiB"},
		{math.MaxInt64, false, "7.99EiB"},
		{math.MinInt64, false, "-8EiB"},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			t.Parallel()
			must.Eq(t, tc.want, formatBytes(tc.n, tc.roundUp))
		})
	}
}
