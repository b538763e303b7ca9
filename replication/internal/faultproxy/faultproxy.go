// Package faultproxy is a TCP proxy that injects network faults between
// a primary's engine and one replica server: the fault simulator's
// (replication/sim, one per replica) and the one package replication's
// own tests put in front of a replica to hold or cut what reaches it
// (TestBrokenConnectionNotDroppedForAnAwayReplica, seed 851711047).
//
// It imports none of Saddlebag's packages: package replication's
// internal tests import it, so it must not import replication. Of
// production code only replication/sim imports it: the data plane never
// carries it.
package faultproxy

import (
	"context"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// Proxy stands between every primary and one replica; its address names
// the replica (in engine configs and in-sync records), so a replica can
// restart on a new port behind it. Faults: cut (drop every connection and
// black-hole new ones, a partition), delay (each new connection gets its
// own latency, up to a maximum, so frames of different connections
// reorder against each other), and hold (forwarding pauses, in both
// directions, then resumes with everything queued: a stall). A cut does
// not end a hold: frames held on a connection the cut closed are lost
// when the hold ends.
type Proxy struct {
	ln net.Listener

	mu       sync.Mutex
	target   string
	cut      bool
	maxDelay time.Duration
	hold     chan struct{} // non-nil while held; closed on release
	rng      *rand.Rand
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

// Listen opens a proxy on a free loopback port, with no target yet
// (SetTarget); seed draws the per-connection delays. Serve runs it.
func Listen(seed uint64) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return &Proxy{ln: ln, conns: map[net.Conn]struct{}{}, rng: rand.New(rand.NewPCG(seed, 7))}, nil
}

// Addr is the proxy's address, the one that names its replica.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetTarget names the replica's current address; "" while it is down,
// when connections are refused: its old port may be reused by any
// process, another simulation's replica included (seed 420912562 wrote
// another schedule's blocks that way).
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// SetCut partitions (true) or heals (false); either drops open connections.
func (p *Proxy) SetCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// SetDelay gives each new connection its own latency, drawn up to d
// (0: none).
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.maxDelay = d
	p.mu.Unlock()
}

// SetHold pauses (true) or resumes (false) forwarding.
func (p *Proxy) SetHold(hold bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if hold && p.hold == nil {
		p.hold = make(chan struct{})
	} else if !hold && p.hold != nil {
		close(p.hold)
		p.hold = nil
	}
}

// Serve forwards connections until ctx ends; then it closes the
// listener, ends any hold and cut (closing every connection) and returns
// once every forwarding goroutine has.
func (p *Proxy) Serve(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() {
		p.ln.Close()
		p.SetHold(false)
		p.SetCut(false)
	})
	defer stop()
	defer p.wg.Wait()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns[c] = struct{}{}
		cut, target := p.cut, p.target
		var delay time.Duration
		if p.maxDelay > 0 {
			delay = time.Duration(p.rng.Int64N(int64(p.maxDelay) + 1))
		}
		p.mu.Unlock()
		if cut {
			continue // black hole: held open, nothing forwarded
		}
		p.wg.Go(func() { p.forward(ctx, c, target, delay) })
	}
}

func (p *Proxy) forward(ctx context.Context, c net.Conn, target string, delay time.Duration) {
	d := net.Dialer{Timeout: time.Second}
	up, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		c.Close()
		p.forget(c)
		return
	}
	p.mu.Lock()
	if p.cut || p.target != target {
		// Partitioned, or the replica stopped meanwhile: its old port may
		// already serve another simulation's replica.
		p.mu.Unlock()
		c.Close()
		up.Close()
		p.forget(c)
		return
	}
	p.conns[up] = struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(up, c, delay) })
	wg.Go(func() { p.pipe(c, up, delay) })
	wg.Wait()
	p.forget(c, up)
}

func (p *Proxy) forget(cs ...net.Conn) {
	p.mu.Lock()
	for _, c := range cs {
		delete(p.conns, c)
	}
	p.mu.Unlock()
}

// pipe copies src to dst, each chunk after the connection's delay and
// not while the proxy is held.
func (p *Proxy) pipe(dst, src net.Conn, delay time.Duration) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if delay > 0 {
				time.Sleep(delay)
			}
			for {
				p.mu.Lock()
				h := p.hold
				p.mu.Unlock()
				if h == nil {
					break
				}
				<-h
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
