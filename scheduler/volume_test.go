package scheduler

import (
	"errors"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

func TestPlaceVolume_OneReplicaInsideTheRequisite(t *testing.T) {
	t.Parallel()
	// Zone a has one roomy node and zone b two: with a requisite of zone
	// a, one replica goes there and the other spreads to zone b (Place
	// would find too few nodes inside zone a).
	nodes := []Node{up("a1", 10*GiB, "zone=a"), up("b1", 50*GiB, "zone=b"), up("b2", 40*GiB, "zone=b")}
	req := Request{Volume: "pg", SizeBytes: GiB, Replicas: 2, Requisite: []map[string]string{{"zone": "a"}}}
	_, err := Place(nodes, req)
	must.ErrorIs(t, err, ErrShortfall)
	for _, perm := range permutations(nodes) {
		got, err := PlaceVolume(perm, req)
		must.NoError(t, err)
		must.Eq(t, []string{"a1", "b1"}, got)
	}
}

func TestPlaceVolume_WithoutRequisiteIsPlace(t *testing.T) {
	t.Parallel()
	nodes := []Node{up("n1", 10*GiB, "rack=a"), up("n2", 20*GiB, "rack=a"), up("n3", 5*GiB, "rack=b")}
	req := Request{Volume: "pg", SizeBytes: GiB, Replicas: 2, Spread: "rack"}
	want, err := Place(nodes, req)
	must.NoError(t, err)
	got, err := PlaceVolume(nodes, req)
	must.NoError(t, err)
	must.Eq(t, want, got)
}

func TestPlaceVolume_Shortfall(t *testing.T) {
	t.Parallel()
	zoneA := []map[string]string{{"zone": "a"}}
	cases := []struct {
		name    string
		nodes   []Node
		wantMsg string
	}{
		{"nothing inside the requisite", []Node{up("b1", 10*GiB, "zone=b"), up("b2", 10*GiB, "zone=b")}, ""},
		{"no second node", []Node{up("a1", 10*GiB, "zone=a"), down(up("b1", 10*GiB, "zone=b"), time.Time{})}, "besides node a1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PlaceVolume(tc.nodes, Request{Volume: "pg", SizeBytes: GiB, Replicas: 2, Requisite: zoneA})
			must.Nil(t, got)
			var se *ShortfallError
			must.True(t, errors.As(err, &se), must.Sprintf("err = %v", err))
			must.StrContains(t, err.Error(), tc.wantMsg)
		})
	}
}

func TestCapacity(t *testing.T) {
	t.Parallel()
	nodes := []Node{up("n1", 10*GiB, "zone=a"), up("n2", 30*GiB, "zone=a"), up("n3", 20*GiB, "zone=b"),
		down(up("n4", 90*GiB, "zone=a"), time.Time{})}
	cases := []struct {
		name string
		req  Request
		want int64
	}{
		{"one replica: the roomiest healthy node", Request{Replicas: 1}, 30 * GiB},
		{"two replicas: the second roomiest", Request{Replicas: 2}, 20 * GiB},
		{"three replicas", Request{Replicas: 3}, 10 * GiB},
		{"more replicas than nodes", Request{Replicas: 4}, 0},
		{"inside a topology", Request{Replicas: 2, Requisite: []map[string]string{{"zone": "a"}}}, 10 * GiB},
		{"too few inside a topology", Request{Replicas: 2, Requisite: []map[string]string{{"zone": "b"}}}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			must.Eq(t, tc.want, Capacity(nodes, tc.req))
		})
	}
}

func TestNodeSegments(t *testing.T) {
	t.Parallel()
	labels := map[string]string{"rack": "r1"}
	must.Eq(t, map[string]string{"rack": "r1", TopologyNodeKey: "n1"}, NodeSegments("n1", labels))
	must.Eq(t, map[string]string{"rack": "r1"}, labels, must.Sprint("the labels were modified"))
	must.Eq(t, map[string]string{TopologyNodeKey: "n2"}, NodeSegments("n2", nil))
}
