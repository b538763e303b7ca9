package replication

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// Replica administration for the control plane: the CSI controller creates
// a new volume's replicas on the nodes it chose, and deletes them when the
// volume is deleted, over the same replica wire protocol a primary uses.
// Neither request promises an epoch, so neither can fence a primary.

// CreateReplica makes sure the replica server at addr holds an (empty,
// sparse) replica of volume with size bytes: created if absent, opened and
// checked if present (a replica of another size fails with ErrInvalid).
// It reports whether this call created it. Idempotent. dial connects
// (nil: plain TCP).
func CreateReplica(ctx context.Context, dial Dialer, addr, volume string, size int64, timeout time.Duration) (bool, error) {
	if err := wire.ValidateVolumeID(volume); err != nil {
		return false, err
	}
	if err := wire.ValidateSize(size); err != nil {
		return false, err
	}
	c, err := dialAdmin(ctx, dial, addr, timeout)
	if err != nil {
		return false, err
	}
	defer c.close()
	req, _ := json.Marshal(wire.OpenRequest{Volume: volume, Size: size, Create: true})
	reply, err := c.do(wire.Frame{Type: wire.FrameOpen, Payload: req})
	if err != nil {
		return false, err
	}
	var open wire.OpenReply
	if err := json.Unmarshal(reply.Payload, &open); err != nil {
		return false, fmt.Errorf("replica %s: %w: open reply: %w", addr, wire.ErrBadFrame, err)
	}
	return open.Created, nil
}

// DeleteReplica removes volume's replica from the replica server at addr.
// An absent replica is deleted already (nil); an open one (a primary is
// connected) fails with wire.ErrReplicaBusy. Idempotent. dial connects (nil:
// plain TCP).
func DeleteReplica(ctx context.Context, dial Dialer, addr, volume string, timeout time.Duration) error {
	if err := wire.ValidateVolumeID(volume); err != nil {
		return err
	}
	c, err := dialAdmin(ctx, dial, addr, timeout)
	if err != nil {
		return err
	}
	defer c.close()
	_, err = c.do(wire.Frame{Type: wire.FrameDelete, Payload: []byte(volume)})
	return err
}

func dialAdmin(ctx context.Context, dial Dialer, addr string, timeout time.Duration) (*replicaClient, error) {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	conn, err := dial.dial(ctx, addr, timeout)
	if err != nil {
		return nil, fmt.Errorf("replica %s: %w", addr, err)
	}
	c := &replicaClient{
		addr: addr, timeout: timeout, conn: conn, log: hclog.NewNullLogger(),
		readerDone: make(chan struct{}), pending: map[uint64]*call{},
	}
	go c.readLoop()
	return c, nil
}
