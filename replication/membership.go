package replication

import (
	"context"
	"fmt"
	"slices"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// AddReplica makes a running engine serve one more replica: it starts out
// of sync and background resync brings it in (a full copy if it is new, a
// checksum compare if it holds data of unknown history); it joins the
// in-sync set, through the hook, when it holds everything. Adding a
// replica the engine already has is a no-op.
func (e *Engine) AddReplica(rc ReplicaConfig) {
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	if slices.ContainsFunc(e.peers, func(p *peer) bool { return p.cfg.Addr == rc.Addr }) {
		return
	}
	p := &peer{cfg: rc, state: StateOutOfSync, reason: "added to the volume"}
	e.peers = append(e.peers, p)
	e.log.Info("replica added: it will be resynced", "replica", rc.Addr)
}

// RetireReplica stops using a replica for good (its node is gone, or the
// controller moved it): it leaves the in-sync set (recorded through the
// hook before RetireReplica returns) and its persisted bitmap is deleted.
// Retiring the last in-sync replica is refused; retiring an unknown one is
// a no-op.
func (e *Engine) RetireReplica(ctx context.Context, addr string) error {
	e.stateMu.Lock()
	i := slices.IndexFunc(e.peers, func(p *peer) bool { return p.cfg.Addr == addr })
	if i < 0 {
		e.stateMu.Unlock()
		return nil
	}
	p := e.peers[i]
	if p.state == StateInSync {
		inSync := 0
		for _, q := range e.peers {
			if q.state == StateInSync {
				inSync++
			}
		}
		if inSync == 1 {
			e.stateMu.Unlock()
			return fmt.Errorf("%w: replica %s is the last one in sync for volume %s", ErrInvalid, addr, e.cfg.Volume)
		}
	}
	e.peers = slices.Delete(e.peers, i, i+1)
	p.state, p.reason = StateDropped, "retired"
	e.order.Lock()
	e.setTargetsLocked(e.rebuildLocked())
	e.order.Unlock()
	err := e.recordLocked(ctx)
	c := p.client
	e.stateMu.Unlock()
	if c != nil {
		c.close() // a resync of it, if any, fails and ends
	}
	if err != nil {
		return err
	}
	e.log.Info("replica retired", "replica", addr)
	if err := e.broadcast(ctx, wire.Frame{Type: wire.FramePutBitmap, Payload: wire.PeerPayload(addr, nil)}); err != nil {
		e.log.Warn("deleting the retired replica's bitmap failed", "replica", addr, "error", err)
	}
	return nil
}
