package replication

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// CreateReplica and DeleteReplica are idempotent, check the size of a
// replica that exists, and refuse to delete a replica a primary has open.
func TestCreateAndDeleteReplica(t *testing.T) {
	dir := t.TempDir()
	r := startTestReplica(t, dir)
	ctx := context.Background()
	const size = 1 << 20

	created, err := CreateReplica(ctx, nil, r.addr, "adm", size, time.Second)
	must.NoError(t, err)
	must.True(t, created)
	must.FileExists(t, filepath.Join(dir, "adm", "data"))
	created, err = CreateReplica(ctx, nil, r.addr, "adm", size, time.Second)
	must.NoError(t, err)
	must.False(t, created)
	_, err = CreateReplica(ctx, nil, r.addr, "adm", 2*size, time.Second)
	must.ErrorIs(t, err, ErrInvalid)

	e := startTestEngine(t, "adm", size, 1, nil, r)
	err = DeleteReplica(ctx, nil, r.addr, "adm", time.Second)
	must.ErrorIs(t, err, wire.ErrReplicaBusy)
	e.Close()

	deadline := time.Now().Add(5 * time.Second)
	for {
		err = DeleteReplica(ctx, nil, r.addr, "adm", time.Second)
		if !errors.Is(err, wire.ErrReplicaBusy) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	must.NoError(t, err)
	_, err = os.Stat(filepath.Join(dir, "adm"))
	must.True(t, errors.Is(err, os.ErrNotExist))
	must.NoError(t, DeleteReplica(ctx, nil, r.addr, "adm", time.Second))
	must.ErrorIs(t, DeleteReplica(ctx, nil, r.addr, "../x", time.Second), ErrInvalid)
}
