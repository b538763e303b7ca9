package replication

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// openRequest is the payload of a FrameOpen.
type openRequest struct {
	Volume string `json:"volume"`
	Size   int64  `json:"size"`
	Create bool   `json:"create"`
}

// openReply is the payload of a FrameOpen reply.
type openReply struct {
	Size       int64  `json:"size"`
	Epoch      uint64 `json:"epoch"`
	Generation uint64 `json:"generation"`
	// Clean is false when the replica's last holder did not shut it down
	// cleanly. Created is true when this open created it, empty.
	Clean   bool `json:"clean"`
	Created bool `json:"created"`
}

// ServerStats counts what a replica server did, for tests and status.
type ServerStats struct {
	Applied    atomic.Int64 // writes, trims and flushes applied
	StaleEpoch atomic.Int64 // frames refused for a stale epoch
	BadFrames  atomic.Int64 // connections closed for a malformed frame
}

// Server serves the replicas of a Store to primaries over the wire protocol.
// Each connection is bound to one volume by its first frame (FrameOpen) and
// its frames are applied strictly in the order they arrive, so every replica
// applies a primary's writes in the same order.
type Server struct {
	store *Store
	log   hclog.Logger
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
			s.serveConn(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// serveConn runs one connection as a pipeline: a reader that decodes and
// checks frames, an applier that applies them in order, and a writer that
// sends replies, so network and disk work overlap.
func (s *Server) serveConn(c net.Conn) {
	defer c.Close()
	log := s.log.With("peer", c.RemoteAddr().String())
	work := make(chan Frame, 64)
	replies := make(chan Frame, 64)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.writeReplies(c, replies, log)
	}()
	go func() {
		defer wg.Done()
		defer close(replies)
		var vol *Volume
		defer func() {
			if vol != nil {
				if err := vol.Close(); err != nil {
					log.Error("close replica", "volume_id", vol.ID(), "error", err)
				}
			}
		}()
		for f := range work {
			replies <- s.apply(&vol, &f, log)
		}
	}()

	r := bufio.NewReaderSize(c, 256<<10)
	for {
		var f Frame
		err := readFrame(r, &f, func(*Frame, int) []byte { return nil })
		if err != nil {
			if errors.Is(err, ErrBadFrame) || errors.Is(err, io.ErrUnexpectedEOF) {
				s.Stats.BadFrames.Add(1)
				log.Error("closing connection after a bad frame", "error", err)
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				log.Debug("connection ended", "error", err)
			}
			break
		}
		if f.Type&replyBit != 0 {
			s.Stats.BadFrames.Add(1)
			log.Error("closing connection after a bad frame", "error", fmt.Errorf("%w: unexpected %s", ErrBadFrame, f.Type))
			break
		}
		work <- f
	}
	close(work)
	// Stop the writer if the peer is gone, so a blocked write cannot hang
	// the pipeline; replies to frames already applied are best effort.
	c.Close()
	wg.Wait()
}

func (s *Server) writeReplies(c net.Conn, replies <-chan Frame, log hclog.Logger) {
	w := bufio.NewWriterSize(c, 64<<10)
	var h [frameHeaderSize]byte
	failed := false
	for f := range replies {
		if failed {
			continue // drain so the applier never blocks
		}
		putHeader(h[:], &f)
		_, err := w.Write(h[:])
		if err == nil {
			_, err = w.Write(f.Payload)
		}
		if err == nil && len(replies) == 0 {
			err = w.Flush()
		}
		if err != nil {
			log.Debug("write reply", "error", err)
			failed = true
			c.Close()
		}
	}
}

// apply performs one request frame and returns its reply.
func (s *Server) apply(vol **Volume, f *Frame, log hclog.Logger) Frame {
	reply := Frame{Type: f.Type | replyBit, Epoch: f.Epoch, ID: f.ID}
	err := s.applyErr(vol, f, &reply)
	if err != nil {
		reply.Status = statusOf(err)
		reply.Payload = []byte(err.Error())
		if reply.Status == StatusStaleEpoch {
			s.Stats.StaleEpoch.Add(1)
			log.Warn("refused frame from a stale primary", "type", f.Type, "error", err)
		} else if reply.Status != StatusNotFound {
			log.Error("request failed", "type", f.Type, "error", err)
		}
	}
	return reply
}

func (s *Server) applyErr(vol **Volume, f *Frame, reply *Frame) error {
	if f.Type == FrameOpen {
		if *vol != nil {
			return fmt.Errorf("%w: connection already bound to volume %s", ErrInvalid, (*vol).ID())
		}
		var req openRequest
		if err := json.Unmarshal(f.Payload, &req); err != nil {
			return fmt.Errorf("%w: open request: %w", ErrInvalid, err)
		}
		v, created, err := s.store.Open(req.Volume, req.Size, req.Create)
		if err != nil {
			return err
		}
		*vol = v
		m := v.Meta()
		reply.Payload, _ = json.Marshal(openReply{Size: v.Size(), Epoch: m.Epoch, Generation: m.Generation,
			Clean: v.WasClean(), Created: created})
		return nil
	}
	v := *vol
	if v == nil {
		return fmt.Errorf("%w: %s before open", ErrInvalid, f.Type)
	}
	var err error
	switch f.Type {
	case FramePromise:
		return v.Promise(f.Epoch)
	case FrameWrite:
		err = v.WriteAt(f.Epoch, f.Payload, int64(f.Offset), f.Flags&FlagFUA != 0)
	case FrameRead:
		if f.Length > MaxIOSize {
			return fmt.Errorf("%w: read of %d bytes", ErrInvalid, f.Length)
		}
		buf := make([]byte, f.Length)
		if err = v.ReadAt(f.Epoch, buf, int64(f.Offset)); err == nil {
			reply.Payload = buf
		}
		return err
	case FrameFlush:
		err = v.Flush(f.Epoch)
	case FrameTrim:
		err = v.Trim(f.Epoch, int64(f.Offset), int64(f.Length))
	default:
		return fmt.Errorf("%w: unknown frame type %d", ErrInvalid, f.Type)
	}
	if err == nil { // writes, flushes and trims: what changes stored state
		s.Stats.Applied.Add(1)
	}
	return err
}
