package scheduler

import (
	"errors"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

func TestPlanReplacements(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	grace := 5 * time.Minute
	longAgo := now.Add(-10 * time.Minute)
	recently := now.Add(-2 * time.Minute)

	cases := []struct {
		name  string
		nodes []Node
		vols  []VolumeState
		want  []Replacement
	}{
		{
			name:  "all holders healthy",
			nodes: []Node{up("n1", 10*GiB), up("n2", 10*GiB), up("n3", 10*GiB)},
			vols:  []VolumeState{{Volume: "v", SizeBytes: GiB, Replicas: 2, Holders: []string{"n1", "n2"}}},
		},
		{
			name:  "down less than grace",
			nodes: []Node{up("n1", 10*GiB), down(up("n2", 10*GiB), recently), up("n3", 10*GiB)},
			vols:  []VolumeState{{Volume: "v", SizeBytes: GiB, Replicas: 2, Holders: []string{"n1", "n2"}}},
		},
		{
			name:  "down exactly the grace",
			nodes: []Node{up("n1", 10*GiB), down(up("n2", 10*GiB), now.Add(-grace)), up("n3", 10*GiB)},
			vols:  []VolumeState{{Volume: "v", SizeBytes: GiB, Replicas: 2, Holders: []string{"n1", "n2"}}},
		},
		{
			name:  "unhealthy with no down time yet",
			nodes: []Node{up("n1", 10*GiB), {ID: "n2", FreeBytes: 10 * GiB}, up("n3", 10*GiB)},
			vols:  []VolumeState{{Volume: "v", SizeBytes: GiB, Replicas: 2, Holders: []string{"n1", "n2"}}},
		},
		{
			name:  "draining holder is not lost",
			nodes: []Node{up("n1", 10*GiB), draining(up("n2", 10*GiB)), up("n3", 10*GiB)},
			vols:  []VolumeState{{Volume: "v", SizeBytes: GiB, Replicas: 2, Holders: []string{"n1", "n2"}}},
		},
		{
			name: "down longer than grace: replaced, holders excluded",
			// n1 is the roomiest node but holds a replica already.
			nodes: []Node{up("n1", 90*GiB), down(up("n2", 90*GiB), longAgo), up("n3", 10*GiB), up("n4", 20*GiB)},
			vols:  []VolumeState{{Volume: "v", SizeBytes: GiB, Replicas: 2, Holders: []string{"n2", "n1"}}},
			want: []Replacement{{
				Volume: "v", Lost: "n2", New: "n4",
				Reason: "node n2 down for 10m0s, longer than the 5m0s grace; full copy to n4",
			}},
		},
		{
			name:  "gone from the snapshot",
			nodes: []Node{up("n1", 10*GiB), up("n3", 10*GiB)},
			vols:  []VolumeState{{Volume: "v", SizeBytes: GiB, Replicas: 2, Holders: []string{"n1", "n2"}}},
			want: []Replacement{{
				Volume: "v", Lost: "n2", New: "n3",
				Reason: "node n2 is gone from the cluster; full copy to n3",
			}},
		},
		{
			name: "replacement avoids the surviving holder's rack",
			nodes: []Node{
				up("a1", 10*GiB, "rack=a"), up("a2", 90*GiB, "rack=a"),
				down(up("b1", 10*GiB, "rack=b"), longAgo), up("b2", 10*GiB, "rack=b"),
			},
			vols: []VolumeState{{Volume: "v", SizeBytes: GiB, Replicas: 2, Spread: "rack", Holders: []string{"a1", "b1"}}},
			want: []Replacement{{
				Volume: "v", Lost: "b1", New: "b2",
				Reason: "node b1 down for 10m0s, longer than the 5m0s grace; full copy to b2",
			}},
		},
		{
			name:  "surplus holder is retired without a copy",
			nodes: []Node{up("n1", 10*GiB), up("n2", 10*GiB), down(up("n3", 10*GiB), longAgo), up("n4", 10*GiB)},
			vols:  []VolumeState{{Volume: "v", SizeBytes: GiB, Replicas: 2, Holders: []string{"n1", "n2", "n3"}}},
			want: []Replacement{{
				Volume: "v", Lost: "n3", Surplus: true,
				Reason: "node n3 down for 10m0s, longer than the 5m0s grace; not replaced: 2 other replicas cover the 2 wanted",
			}},
		},
		{
			name: "two lost, one needed",
			nodes: []Node{
				up("n1", 10*GiB), up("n2", 10*GiB),
				down(up("n3", 10*GiB), longAgo), down(up("n4", 10*GiB), longAgo), up("n5", 10*GiB),
			},
			vols: []VolumeState{{Volume: "v", SizeBytes: GiB, Replicas: 3, Holders: []string{"n4", "n3", "n1", "n2"}}},
			want: []Replacement{
				{Volume: "v", Lost: "n3", New: "n5", Reason: "node n3 down for 10m0s, longer than the 5m0s grace; full copy to n5"},
				{Volume: "v", Lost: "n4", Surplus: true, Reason: "node n4 down for 10m0s, longer than the 5m0s grace; not replaced: 3 other replicas cover the 3 wanted"},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := PlanReplacements(tc.nodes, tc.vols, now, grace)
			must.Eq(t, tc.want, got)
		})
	}
}

func TestPlanReplacements_NoCapacity(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	nodes := []Node{
		up("n1", 10*GiB), down(up("n2", 10*GiB), now.Add(-time.Hour)),
		up("n3", 2*GiB), draining(up("n4", 100*GiB)),
	}
	vols := []VolumeState{{Volume: "v", SizeBytes: 5 * GiB, Replicas: 2, Holders: []string{"n1", "n2"}}}
	got := PlanReplacements(nodes, vols, now, time.Minute)
	must.Len(t, 1, got)
	r := got[0]
	must.Eq(t, "v", r.Volume)
	must.Eq(t, "n2", r.Lost)
	must.Eq(t, "", r.New)
	must.False(t, r.Surplus)
	var short *ShortfallError
	must.True(t, errors.As(r.Err, &short))
	must.Eq(t, &ShortfallError{Volume: "v", Wanted: 1, Eligible: 0, Rejected: map[string]string{
		"n1": "already holds a replica",
		"n2": "unhealthy",
		"n3": "needs 5GiB, has 2GiB free",
		"n4": "draining",
	}}, short)
	must.Eq(t, "node n2 down for 1h0m0s, longer than the 1m0s grace; no replacement: "+
		`volume "v": wants 1 replica on distinct nodes, only 0 nodes qualify; rejected: n1 (already holds a replica); n2 (unhealthy); n3 (needs 5GiB, has 2GiB free); n4 (draining)`,
		r.Reason)
}

func TestPlanReplacements_PartialCapacity(t *testing.T) {
	t.Parallel()
	// Two lost holders, room for one new replica: the first lost holder
	// by ID gets it, the second says why it got none.
	now := time.Unix(10_000, 0)
	nodes := []Node{up("n1", 10*GiB), up("n4", 10*GiB), up("n5", GiB)}
	vols := []VolumeState{{Volume: "v", SizeBytes: 2 * GiB, Replicas: 3, Holders: []string{"n3", "n2", "n1"}}}
	got := PlanReplacements(nodes, vols, now, time.Minute)
	must.Len(t, 2, got)
	must.Eq(t, "n2", got[0].Lost)
	must.Eq(t, "n4", got[0].New)
	must.NoError(t, got[0].Err)
	must.Eq(t, "n3", got[1].Lost)
	must.Eq(t, "", got[1].New)
	must.ErrorIs(t, got[1].Err, ErrShortfall)
}

func TestPlanReplacements_BooksSpaceAcrossVolumes(t *testing.T) {
	t.Parallel()
	// n3 has room for one 6GiB copy, not two: the second volume (by name)
	// must go elsewhere or go without.
	now := time.Unix(10_000, 0)
	nodes := []Node{up("n1", 100*GiB), up("n3", 10*GiB), up("n4", 7*GiB)}
	vols := []VolumeState{
		{Volume: "b", SizeBytes: 6 * GiB, Replicas: 2, Holders: []string{"n1", "gone-b"}},
		{Volume: "a", SizeBytes: 6 * GiB, Replicas: 2, Holders: []string{"n1", "gone-a"}},
		{Volume: "c", SizeBytes: 6 * GiB, Replicas: 2, Holders: []string{"n1", "gone-c"}},
	}
	got := PlanReplacements(nodes, vols, now, time.Minute)
	must.Len(t, 3, got)
	must.Eq(t, []string{"a", "b", "c"}, []string{got[0].Volume, got[1].Volume, got[2].Volume})
	must.Eq(t, "n3", got[0].New)
	must.Eq(t, "n4", got[1].New)
	must.Eq(t, "", got[2].New)
	var short *ShortfallError
	must.True(t, errors.As(got[2].Err, &short))
	must.Eq(t, "needs 6GiB, has 4GiB free", short.Rejected["n3"])
	must.Eq(t, "needs 6GiB, has 1GiB free", short.Rejected["n4"])
}

func TestPlanReplacements_InvalidSnapshot(t *testing.T) {
	t.Parallel()
	now := time.Unix(10_000, 0)
	vols := []VolumeState{{Volume: "v", Replicas: 2, Holders: []string{"n1", "n2"}}}
	nodes := []Node{up("n1", GiB), down(up("n1", GiB), time.Unix(0, 0)), up("n3", GiB)}
	must.Nil(t, PlanReplacements(nodes, vols, now, time.Minute))
	must.ErrorIs(t, CheckNodes(nodes), ErrInvalid)
	must.NoError(t, CheckNodes(nodes[1:]))
}

func TestPlanReplacements_InvalidVolume(t *testing.T) {
	t.Parallel()
	now := time.Unix(10_000, 0)
	nodes := []Node{up("n1", GiB), up("n3", GiB)}
	vols := []VolumeState{{Volume: "v", SizeBytes: -1, Replicas: 2, Holders: []string{"n1", "n2"}}}
	got := PlanReplacements(nodes, vols, now, time.Minute)
	must.Len(t, 1, got)
	must.Eq(t, "", got[0].New)
	must.ErrorIs(t, got[0].Err, ErrInvalid)
}
