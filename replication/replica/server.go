package replica

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// ServerStats counts what a replica server did, for tests and status.
type ServerStats struct {
	Applied    atomic.Int64 // writes, trims and flushes applied
	StaleEpoch atomic.Int64 // frames refused for a stale epoch
	BadFrames  atomic.Int64 // connections closed for a malformed frame
	Refused    atomic.Int64 // connections its Guard refused
}

// Server serves the replicas of a Store to primaries over the wire protocol.
// Each connection is bound to one volume by its first frame (wire.FrameOpen) and
// its frames are applied strictly in the order they arrive, so every replica
// applies a primary's writes in the same order.
type Server struct {
	store *Store
	log   hclog.Logger
	guard Guard // nil: plain TCP, every peer admitted
	Stats ServerStats

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewServer returns a server for the replicas in store.
func NewServer(store *Store, log hclog.Logger) *Server {
	return &Server{store: store, log: log.Named("replica-server"), conns: map[net.Conn]struct{}{}}
}

// Serve accepts connections on ln until ctx is done, then closes ln and every
// connection and returns once all of them have finished.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	defer stop()
	defer s.wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		s.mu.Lock()
		if ctx.Err() != nil {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// serveConn applies one connection's frames strictly in arrival order and
// answers each. It works inline, with no hand-offs between goroutines: the
// kernel's socket buffer keeps receiving while a frame is applied, and
// replies are batched while more requests are already buffered.
func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	log := s.log.With("peer", c.RemoteAddr().String())
	c, identity, ok := s.admit(ctx, c)
	if !ok {
		return
	}
	defer c.Close()
	if identity != "" {
		log = log.With("identity", identity)
	}
	var vol *Volume
	var session uint64 // of this connection's promise (Volume.enter)
	defer func() {
		if vol != nil {
			if err := vol.Close(); err != nil {
				log.Error("close replica", "volume_id", vol.ID(), "error", err)
			}
		}
	}()
	r := bufio.NewReaderSize(c, 256<<10)
	w := bufio.NewWriterSize(c, 64<<10)
	var in, out []byte // payload buffers reused across frames
	var h [wire.HeaderSize]byte
	for {
		var f wire.Frame
		err := wire.ReadFrameInto(r, &f, func(_ *wire.Frame, n int) []byte {
			if cap(in) < n {
				in = make([]byte, n)
			}
			return in
		})
		if err != nil {
			if errors.Is(err, wire.ErrBadFrame) || errors.Is(err, io.ErrUnexpectedEOF) {
				s.Stats.BadFrames.Add(1)
				log.Error("closing connection after a bad frame", "error", err)
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				log.Debug("connection ended", "error", err)
			}
			return
		}
		if f.Type&wire.ReplyBit != 0 {
			s.Stats.BadFrames.Add(1)
			log.Error("closing connection after a bad frame", "error", fmt.Errorf("%w: unexpected %s", wire.ErrBadFrame, f.Type))
			return
		}
		reply := s.apply(&vol, &session, &f, &out, log)
		wire.PutHeader(h[:], &reply, wire.PayloadSum(reply.Payload))
		_, err = w.Write(h[:])
		if err == nil {
			_, err = w.Write(reply.Payload)
		}
		if err == nil && r.Buffered() == 0 {
			err = w.Flush()
		}
		if err != nil {
			log.Debug("write reply", "error", err)
			return
		}
		// Do not pin a rare huge buffer for the connection's lifetime.
		if cap(in) > 4<<20 {
			in = nil
		}
		if cap(out) > 4<<20 {
			out = nil
		}
	}
}

// apply performs one request frame and returns its reply.
// A read's data goes into *buf, which grows as needed.
func (s *Server) apply(vol **Volume, session *uint64, f *wire.Frame, buf *[]byte, log hclog.Logger) wire.Frame {
	reply := wire.Frame{Type: f.Type | wire.ReplyBit, Epoch: f.Epoch, ID: f.ID}
	err := s.applyErr(vol, session, f, buf, &reply)
	if err == nil && f.Type != wire.FrameRead && log.IsTrace() {
		// Every change a replica applies, for reading a failure's history
		// beside the primary's (the simulator's logs).
		length := f.Length
		if f.Type == wire.FrameWrite {
			length = uint64(len(f.Payload))
		}
		args := []any{"type", f.Type, "epoch", f.Epoch, "offset", f.Offset, "length", length, "session", *session}
		switch f.Type {
		case wire.FrameMembership:
			args = append(args, "membership", string(f.Payload))
		case wire.FrameTarget:
			args = append(args, "target_gen", binary.BigEndian.Uint64(f.Payload))
		case wire.FrameActivity:
			extents := make([]uint64, len(f.Payload)/8)
			for i := range extents {
				extents[i] = binary.BigEndian.Uint64(f.Payload[8*i:])
			}
			args = append(args, "extents", extents)
		}
		log.Trace("applied", args...)
	}
	if err != nil {
		reply.Status = wire.StatusOf(err)
		reply.Payload = []byte(err.Error())
		if reply.Status == wire.StatusStaleEpoch {
			s.Stats.StaleEpoch.Add(1)
			log.Warn("refused frame from a stale primary", "type", f.Type, "error", err)
		} else if reply.Status != wire.StatusNotFound {
			log.Error("request failed", "type", f.Type, "error", err)
		}
	}
	return reply
}

func (s *Server) applyErr(vol **Volume, session *uint64, f *wire.Frame, buf *[]byte, reply *wire.Frame) error {
	if f.Type == wire.FrameOpen {
		if *vol != nil {
			return fmt.Errorf("%w: connection already bound to volume %s", wire.ErrInvalid, (*vol).ID())
		}
		var req wire.OpenRequest
		if err := json.Unmarshal(f.Payload, &req); err != nil {
			return fmt.Errorf("%w: open request: %w", wire.ErrInvalid, err)
		}
		v, created, err := s.store.Open(req.Volume, req.Size, req.Create)
		if err != nil {
			return err
		}
		*vol = v
		reply.Payload, _ = json.Marshal(stateReply(v, created))
		return nil
	}
	if f.Type == wire.FrameDelete {
		if *vol != nil {
			return fmt.Errorf("%w: delete on a connection bound to volume %s", wire.ErrInvalid, (*vol).ID())
		}
		return s.store.Delete(string(f.Payload))
	}
	v := *vol
	if v == nil {
		return fmt.Errorf("%w: %s before open", wire.ErrInvalid, f.Type)
	}
	if f.Type != wire.FramePromise {
		done, err := v.enter(*session, f.Epoch)
		if err != nil {
			return err
		}
		defer done()
	}
	var err error
	switch f.Type {
	case wire.FramePromise:
		var owner uint64
		if len(f.Payload) == 8 {
			owner = binary.BigEndian.Uint64(f.Payload)
		}
		sess, err := v.PromiseSession(f.Epoch, owner)
		if err != nil {
			return err
		}
		*session = sess
		// The state after the promise: what the new primary recovers from.
		reply.Payload, _ = json.Marshal(stateReply(v, false))
		return nil
	case wire.FrameMembership:
		var m wire.Membership
		if err := json.Unmarshal(f.Payload, &m); err != nil {
			return fmt.Errorf("%w: membership: %w", wire.ErrInvalid, err)
		}
		return v.SetMembership(f.Epoch, m)
	case wire.FrameTarget:
		if len(f.Payload) != 8 {
			return fmt.Errorf("%w: resync target generation of %d bytes, want 8", wire.ErrInvalid, len(f.Payload))
		}
		return v.SetTargetGen(f.Epoch, binary.BigEndian.Uint64(f.Payload))
	case wire.FrameWrite:
		err = v.WriteAt(f.Epoch, f.Payload, int64(f.Offset), f.Flags&wire.FlagFUA != 0)
	case wire.FrameRead:
		if f.Length > wire.MaxIOSize {
			return fmt.Errorf("%w: read of %d bytes", wire.ErrInvalid, f.Length)
		}
		if uint64(cap(*buf)) < f.Length {
			*buf = make([]byte, f.Length)
		}
		data := (*buf)[:f.Length]
		if err = v.ReadAt(f.Epoch, data, int64(f.Offset)); err == nil {
			reply.Payload = data
		}
		return err
	case wire.FrameFlush:
		err = v.Flush(f.Epoch)
	case wire.FrameTrim:
		err = v.Trim(f.Epoch, int64(f.Offset), int64(f.Length))
	case wire.FrameActivity:
		if len(f.Payload)%8 != 0 {
			return fmt.Errorf("%w: activity log of %d bytes", wire.ErrInvalid, len(f.Payload))
		}
		extents := make([]uint64, len(f.Payload)/8)
		for i := range extents {
			extents[i] = binary.BigEndian.Uint64(f.Payload[8*i:])
		}
		return v.SetActivityLog(f.Epoch, extents)
	case wire.FramePutBitmap:
		peer, enc, perr := wire.SplitPeerPayload(f.Payload)
		if perr != nil {
			return perr
		}
		return v.PutPeerBitmap(f.Epoch, peer, enc)
	case wire.FrameGetBitmap:
		enc, gerr := v.PeerBitmap(f.Epoch, string(f.Payload))
		reply.Payload = enc
		return gerr
	case wire.FrameChecksum:
		sums, cerr := v.Checksums(f.Epoch, int64(f.Offset), int64(f.Length))
		reply.Payload = sums
		return cerr
	case wire.FrameAllocated:
		runs, aerr := v.Allocated(f.Epoch, int64(f.Offset), int64(f.Length))
		for _, r := range runs {
			reply.Payload = binary.BigEndian.AppendUint64(reply.Payload, uint64(r[0]))
			reply.Payload = binary.BigEndian.AppendUint64(reply.Payload, uint64(r[1]))
		}
		return aerr
	default:
		return fmt.Errorf("%w: unknown frame type %d", wire.ErrInvalid, f.Type)
	}
	if err == nil { // writes, flushes and trims: what changes stored state
		s.Stats.Applied.Add(1)
	}
	return err
}

// stateReply is what OPEN and PROMISE answer: the replica's state.
func stateReply(v *Volume, created bool) wire.OpenReply {
	m := v.Meta()
	return wire.OpenReply{Size: v.Size(), Epoch: m.Epoch, Generation: m.Generation, Clean: v.WasClean(), Created: created,
		ActivityLog: m.ActivityLog, Incarnation: m.Incarnation, Membership: m.Membership, TargetGen: m.TargetGen, BootID: v.store.bootID}
}
