package statusapi

import (
	"bytes"
	"context"
	"net"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication"
)

type fixed replication.EngineStatus

func (f fixed) Status() replication.EngineStatus { return replication.EngineStatus(f) }

func TestServeFetchFormat(t *testing.T) {
	want := replication.EngineStatus{Volume: "pg", Size: 1 << 30, Epoch: 7, InSync: 1, MinInSync: 2,
		Replicas: []replication.ReplicaStatus{
			{Addr: "127.0.0.1:1", State: replication.StateInSync},
			{Addr: "127.0.0.1:2", State: replication.StateResyncing, Reason: "receive: EOF", MissingBytes: 8 << 20,
				Resync: &replication.ResyncStatus{Mode: "bitmap", TotalBytes: 16 << 20, DoneBytes: 8 << 20, Percent: 50,
					BytesPerSec: 4 << 20, ETASeconds: 2}},
		}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, fixed(want), nil, hclog.NewNullLogger()) }()
	got, err := Fetch(context.Background(), ln.Addr().String(), nil)
	must.NoError(t, err)
	must.Eq(t, want, got)
	cancel()
	must.NoError(t, <-done)

	var b bytes.Buffer
	Format(&b, got)
	out := b.String()
	must.StrContains(t, out, "holding writes (in sync 1 < min_in_sync 2)")
	must.StrContains(t, out, "resync bitmap 50.0% (8MiB of 16MiB, 4.0 MiB/s, eta 2s)")
	must.StrContains(t, out, "missing 8MiB")
	must.StrContains(t, out, "(receive: EOF)")

	_, err = Fetch(context.Background(), ln.Addr().String(), nil)
	must.Error(t, err) // the server is gone: a clear error, not a hang
}
