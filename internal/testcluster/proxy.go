package testcluster

import (
	"context"
	"io"
	"net"
	"sync"
)

// Proxy forwards TCP connections from a loopback port to a target, until
// the test cuts it: Cut drops every open connection and from then on
// accepts new ones but forwards nothing (a black hole, like a partition),
// until Restore.
//
// Serve runs until ctx ends; all methods are safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewProxy listens on a free port of ip for target.
func NewProxy(ip, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return nil, err
	}
	return &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}, nil
}

// Addr is the address clients should dial instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut drops every connection and black-holes new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.closeAllLocked()
}

// Restore forwards again; connections held while cut are dropped.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	p.closeAllLocked()
}

func (p *Proxy) closeAllLocked() {
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return p.cut
}

// Serve accepts and forwards until ctx ends, then closes everything and
// returns once every forwarding goroutine has finished.
func (p *Proxy) Serve(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() {
		p.ln.Close()
		p.mu.Lock()
		p.closeAllLocked()
		p.mu.Unlock()
	})
	defer stop()
	defer p.wg.Wait()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.track(c) {
			continue // black hole: hold it open, forward nothing
		}
		p.wg.Go(func() { p.forward(ctx, c) })
	}
}

func (p *Proxy) forward(ctx context.Context, c net.Conn) {
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	if p.track(up) {
		c.Close()
		up.Close()
		return
	}
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		dst.Close()
		src.Close()
	}
	wg.Go(func() { pipe(up, c) })
	wg.Go(func() { pipe(c, up) })
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}
