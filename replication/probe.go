package replication

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// ProbeResult is what each request of a Probe got back (nil: accepted).
type ProbeResult struct {
	Promise, Write, Read, Delete error
}

// Probe sends, each on a connection of its own made with dial, the
// requests a hostile peer would use against volume's replica at addr: a
// PROMISE of epoch (fencing the current primary if accepted), a WRITE of
// data at off, a READ of len(data) bytes at off (each after the OPEN its
// connection needs, pipelined behind it, at epoch), and a DELETE. It is
// a security drill for the transport (see Guard): every request of a peer
// that is not let in must fail and change nothing. A peer that is let in
// really does all of it.
func Probe(ctx context.Context, dial Dialer, addr, volume string, size int64, epoch uint64, off int64, data []byte,
	timeout time.Duration) ProbeResult {
	open, _ := json.Marshal(wire.OpenRequest{Volume: volume, Size: size})
	run := func(frames ...wire.Frame) error {
		c, err := dialAdmin(ctx, dial, addr, timeout)
		if err != nil {
			return err
		}
		defer c.close()
		c.epoch = epoch
		calls := make([]*call, len(frames))
		for i, f := range frames {
			var rbuf []byte
			if f.Type == wire.FrameRead {
				rbuf = make([]byte, f.Length)
			}
			calls[i] = c.start(f, rbuf)
		}
		for i, cl := range calls {
			if _, err := c.wait(cl); err != nil {
				return fmt.Errorf("%s: %w", frames[i].Type, err)
			}
		}
		return nil
	}
	var r ProbeResult
	r.Promise = run(wire.Frame{Type: wire.FrameOpen, Payload: open}, wire.Frame{Type: wire.FramePromise, Payload: binary.BigEndian.AppendUint64(nil, 1)})
	r.Write = run(wire.Frame{Type: wire.FrameOpen, Payload: open}, wire.Frame{Type: wire.FrameWrite, Offset: uint64(off), Payload: data})
	r.Read = run(wire.Frame{Type: wire.FrameOpen, Payload: open}, wire.Frame{Type: wire.FrameRead, Offset: uint64(off), Length: uint64(len(data))})
	r.Delete = run(wire.Frame{Type: wire.FrameDelete, Payload: []byte(volume)})
	return r
}
