package clusterstatus

import (
	"bytes"
	"testing"

	"github.com/shoenig/test/must"
)

func TestBar(t *testing.T) {
	must.Eq(t, "[--------------------]", Bar(0))
	must.Eq(t, "[##########----------]", Bar(50))
	must.Eq(t, "[####################]", Bar(100))
	must.Eq(t, "[####################]", Bar(140))
	must.Eq(t, "[--------------------]", Bar(-3))
}

// TestFormat: every state a replica can be in, as an operator reads it.
func TestFormat(t *testing.T) {
	st := Status{
		Nodes: []Node{{Name: "node1", Healthy: true, FreeBytes: 10 << 30}, {Name: "node2", Why: "saddlebag-node-node2:ttl critical"}},
		Volumes: []Volume{{ID: "pg", SizeBytes: 1 << 30, Wanted: 3, FSType: "xfs", Encrypted: true, Primary: "node1", Epoch: 7,
			Health: "degraded", HealthNote: "in sync 1 of 3: node1; not in sync: node2, node3", ProgressAge: 1.2,
			Replicas: []Replica{
				{Node: "node1", Addr: "10.0.0.1:7400", State: InSync},
				{Node: "node2", Addr: "10.0.0.2:7400", State: Missing, MissingBytes: 3 << 20, Detail: "node down: saddlebag-node-node2:ttl critical"},
				{Node: "node3", Addr: "10.0.0.3:7400", State: Resyncing, Resync: &Resync{Mode: "full", TotalBytes: 800 << 20,
					DoneBytes: 200 << 20, Percent: 25, BytesPerSec: 40 << 20, ETASeconds: 15}},
				{Node: "node4", Addr: "10.0.0.4:7400", State: Lost, Detail: "its node was down beyond the grace: being replaced"},
			}}},
	}
	var b bytes.Buffer
	Format(&b, st, true)
	want := `nodes: node1 (healthy, 10 GiB free) node2 (DOWN: saddlebag-node-node2:ttl critical)

volume pg  1.0 GiB  3 replicas  xfs  encrypted
  primary  node1, epoch 7
  health   degraded: in sync 1 of 3: node1; not in sync: node2, node3
    node1  10.0.0.1:7400  in sync
    node2  10.0.0.2:7400  missing    lacks 3.0 MiB; node down: saddlebag-node-node2:ttl critical
    node3  10.0.0.3:7400  resyncing  [#####---------------]  25.0%  200 MiB of 800 MiB  40 MiB/s  eta 15s  (full)
    node4  10.0.0.4:7400  lost       its node was down beyond the grace: being replaced
  (replica states from node1, 1s ago)
`
	must.Eq(t, want, b.String())
}
