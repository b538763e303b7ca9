package replication

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication/replica"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// rawClient is a wire-protocol client that sends exactly the frames a test
// gives it, at the epoch it is given: a hostile or broken primary.
func rawClient(t *testing.T, addr string, epoch uint64) *replicaClient {
	t.Helper()
	c, err := dialAdmin(context.Background(), nil, addr, 5*time.Second)
	must.NoError(t, err)
	c.epoch = epoch
	t.Cleanup(c.close)
	return c
}

func rawOpen(t *testing.T, c *replicaClient, volume string, size int64) {
	t.Helper()
	req, _ := json.Marshal(wire.OpenRequest{Volume: volume, Size: size, Create: true})
	_, err := c.do(wire.Frame{Type: wire.FrameOpen, Payload: req})
	must.NoError(t, err)
}

// TestReplicaRefusesImplausibleEpochJump: a PROMISE (or a write, which
// promises implicitly) more than 2^32 above the highest promised epoch is
// refused with both numbers named, and nothing changes: the promised
// epoch on disk, the data, and the current primary's ability to go on.
func TestReplicaRefusesImplausibleEpochJump(t *testing.T) {
	dir := t.TempDir()
	r := startTestReplica(t, dir)
	const size = 1 << 20

	good := rawClient(t, r.addr, 7)
	rawOpen(t, good, "v", size)
	_, err := good.do(wire.Frame{Type: wire.FramePromise})
	must.NoError(t, err)
	data := bytes.Repeat([]byte{0xab}, 4096)
	_, err = good.do(wire.Frame{Type: wire.FrameWrite, Offset: 0, Payload: data})
	must.NoError(t, err)

	for _, epoch := range []uint64{7 + wire.MaxEpochJump + 1, math.MaxUint64} {
		bad := rawClient(t, r.addr, epoch)
		rawOpen(t, bad, "v", size)
		_, err := bad.do(wire.Frame{Type: wire.FramePromise})
		must.ErrorIs(t, err, ErrInvalid)
		must.StrContains(t, err.Error(), fmt.Sprint(epoch))
		must.StrContains(t, err.Error(), "highest promised epoch 7")
		_, err = bad.do(wire.Frame{Type: wire.FrameWrite, Offset: 0, Payload: make([]byte, 4096)})
		must.ErrorIs(t, err, ErrInvalid)
		must.StrContains(t, err.Error(), fmt.Sprint(epoch))
		_, err = bad.do(wire.Frame{Type: wire.FrameTrim, Offset: 0, Length: 4096})
		must.ErrorIs(t, err, ErrInvalid)
	}

	// Nothing changed: the current primary still writes and reads at 7,
	// and the promise on disk is still 7 after a restart of the server.
	_, err = good.do(wire.Frame{Type: wire.FrameWrite, Offset: 4096, Payload: data})
	must.NoError(t, err)
	buf := make([]byte, 8192)
	got, err := good.wait(good.start(wire.Frame{Type: wire.FrameRead, Offset: 0, Length: 8192}, buf))
	must.NoError(t, err)
	must.Eq(t, append(append([]byte{}, data...), data...), got.Payload)
	good.close()
	r.stop()
	s, err := replica.OpenStore(dir, testLogger(t))
	must.NoError(t, err)
	v, _, err := s.Open("v", size, false)
	must.NoError(t, err)
	defer v.Close()
	must.Eq(t, uint64(7), v.Meta().Epoch)

	// The limit itself is allowed: a jump of exactly 2^32.
	must.NoError(t, v.Promise(7+wire.MaxEpochJump))
	must.Eq(t, uint64(7+wire.MaxEpochJump), v.Meta().Epoch)
}
