package replication

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/replication/wire"
)

// ErrTimeout means a replica did not answer within the replica timeout.
var ErrTimeout = errors.New("replica timed out")

// replicaClient is the primary's pipelined connection to one replica.
// Requests are sent in the order start is called and the replica applies
// them in that order; replies are matched by request id. A transport error
// or a timeout fails every outstanding request and the client for good.
//
// replicaClient is safe for concurrent use.
type replicaClient struct {
	addr    string
	epoch   uint64
	timeout time.Duration
	conn    net.Conn
	log     hclog.Logger

	readerDone chan struct{}

	wmu sync.Mutex // serialises sends, so requests go out in start order
	hdr [wire.HeaderSize]byte

	mu      sync.Mutex
	err     error
	nextID  uint64
	pending map[uint64]*call
}

// call is one request in flight.
type call struct {
	req      wire.Frame
	rbuf     []byte // where a read's data goes
	deadline time.Time
	done     chan struct{}
	reply    wire.Frame
	err      error
}

// dialReplica connects to the replica server at addr, opens (or with
// create, creates) the volume's replica and promises epoch on it. The
// state it returns is the replica's as of the promise, so nothing a
// previous primary does after it (it is refused from then on) is missed;
// only Created comes from the open. When the replica has promised a
// higher epoch, the error wraps wire.ErrStaleEpoch and the returned state's
// Epoch is that promise.
func dialReplica(ctx context.Context, dial Dialer, addr, volume string, size int64, epoch, owner uint64, create bool,
	timeout time.Duration, log hclog.Logger) (*replicaClient, wire.OpenReply, error) {
	var open wire.OpenReply
	conn, err := dial.dial(ctx, addr, timeout)
	if err != nil {
		return nil, open, fmt.Errorf("replica %s: %w", addr, err)
	}
	c := &replicaClient{
		addr: addr, epoch: epoch, timeout: timeout, conn: conn,
		log:        log.Named("replica").With("replica", addr),
		readerDone: make(chan struct{}),
		pending:    map[uint64]*call{},
	}
	go c.readLoop()
	decode := func(reply wire.Frame, into *wire.OpenReply) error {
		if err := json.Unmarshal(reply.Payload, into); err != nil {
			return fmt.Errorf("replica %s: %w: %s reply: %w", addr, wire.ErrBadFrame, reply.Type, err)
		}
		return nil
	}
	req, _ := json.Marshal(wire.OpenRequest{Volume: volume, Size: size, Create: create})
	reply, err := c.do(wire.Frame{Type: wire.FrameOpen, Payload: req})
	if err == nil {
		err = decode(reply, &open)
	}
	if err == nil {
		reply, err = c.do(wire.Frame{Type: wire.FramePromise, Payload: binary.BigEndian.AppendUint64(nil, owner)})
		if err == nil {
			created := open.Created
			err = decode(reply, &open)
			open.Created = created
		}
	}
	if err != nil {
		c.close()
		return nil, open, err
	}
	return c, open, nil
}

// start sends req (its Epoch and ID are filled in) and returns the call to
// wait on. For a read, rbuf receives the data. Requests reach the replica
// in the order their start calls return.
func (c *replicaClient) start(req wire.Frame, rbuf []byte) *call {
	return c.startSummed(req, wire.PayloadSum(req.Payload), rbuf)
}

// startSummed is start for a caller that sends one payload to several
// replicas and computed psum = wire.PayloadSum(req.Payload) once.
func (c *replicaClient) startSummed(req wire.Frame, psum uint32, rbuf []byte) *call {
	cl := &call{req: req, rbuf: rbuf, deadline: time.Now().Add(c.timeout), done: make(chan struct{})}
	cl.req.Epoch = c.epoch
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.err != nil {
		cl.err = c.err
		c.mu.Unlock()
		close(cl.done)
		return cl
	}
	c.nextID++
	cl.req.ID = c.nextID
	c.pending[cl.req.ID] = cl
	c.mu.Unlock()

	wire.PutHeader(c.hdr[:], &cl.req, psum)
	c.conn.SetWriteDeadline(cl.deadline)
	bufs := net.Buffers{c.hdr[:], cl.req.Payload}
	if _, err := bufs.WriteTo(c.conn); err != nil {
		c.fail(fmt.Errorf("replica %s: send %s: %w", c.addr, cl.req.Type, err))
	}
	return cl
}

// wait blocks until the call completes or its deadline passes; on a
// timeout the whole client fails, because a replica that misses one reply
// can no longer be trusted to have applied the requests after it.
func (c *replicaClient) wait(cl *call) (wire.Frame, error) {
	t := time.NewTimer(time.Until(cl.deadline))
	defer t.Stop()
	select {
	case <-cl.done:
	case <-t.C:
		c.fail(fmt.Errorf("replica %s: %w after %s (%s)", c.addr, ErrTimeout, c.timeout, cl.req.Type))
		<-c.readerDone // the reader may be filling cl.rbuf; let it stop first
		<-cl.done
	}
	return cl.reply, cl.err
}

func (c *replicaClient) do(req wire.Frame) (wire.Frame, error) {
	return c.wait(c.start(req, nil))
}

// fail marks the client failed with err, closes the connection and
// completes every outstanding call with err. Only the first error counts.
func (c *replicaClient) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	c.conn.Close()
	for _, cl := range pending {
		cl.err = err
		close(cl.done)
	}
}

// close shuts the client down; outstanding calls fail.
func (c *replicaClient) close() {
	c.fail(fmt.Errorf("replica %s: %w", c.addr, net.ErrClosed))
	<-c.readerDone
}

// failure returns the error the client failed with, or nil.
func (c *replicaClient) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *replicaClient) readLoop() {
	defer close(c.readerDone)
	r := bufio.NewReaderSize(c.conn, 256<<10)
	for {
		var f wire.Frame
		err := wire.ReadFrameInto(r, &f, func(f *wire.Frame, n int) []byte {
			c.mu.Lock()
			defer c.mu.Unlock()
			if cl := c.pending[f.ID]; cl != nil && len(cl.rbuf) == n {
				return cl.rbuf
			}
			return nil
		})
		if err != nil {
			c.fail(fmt.Errorf("replica %s: receive: %w", c.addr, err))
			return
		}
		c.mu.Lock()
		cl := c.pending[f.ID]
		delete(c.pending, f.ID)
		c.mu.Unlock()
		if cl == nil || f.Type != cl.req.Type|wire.ReplyBit {
			c.fail(fmt.Errorf("replica %s: %w: unexpected %s for request %d", c.addr, wire.ErrBadFrame, f.Type, f.ID))
			return
		}
		cl.reply = f
		if f.Status != wire.StatusOK {
			cl.err = &wire.ReplicaError{Status: f.Status, Message: fmt.Sprintf("replica %s: %s", c.addr, f.Payload)}
		} else if cl.rbuf != nil && len(f.Payload) != len(cl.rbuf) {
			cl.err = fmt.Errorf("replica %s: %w: read returned %d bytes, want %d", c.addr, wire.ErrBadFrame, len(f.Payload), len(cl.rbuf))
		}
		close(cl.done)
	}
}
