package faultproxy

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

// echo serves an echo server on loopback until the test ends.
func echo(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func serve(t *testing.T, target string) *Proxy {
	p, err := Listen(1)
	must.NoError(t, err)
	p.SetTarget(target)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Serve(ctx)
	}()
	t.Cleanup(func() { stop(); <-done })
	return p
}

func dial(t *testing.T, p *Proxy) net.Conn {
	c, err := net.Dial("tcp", p.Addr())
	must.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends msg and reads the echo within wait; false if none came.
func roundTrip(t *testing.T, c net.Conn, msg string, wait time.Duration) (string, bool) {
	_, err := c.Write([]byte(msg))
	must.NoError(t, err)
	must.NoError(t, c.SetReadDeadline(time.Now().Add(wait)))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return "", false
	}
	return string(buf), true
}

// A hold delivers nothing until released, then everything it queued.
func TestProxyHoldDeliversOnRelease(t *testing.T) {
	p := serve(t, echo(t))
	c := dial(t, p)
	got, ok := roundTrip(t, c, "before", 5*time.Second)
	must.True(t, ok)
	must.Eq(t, "before", got)

	p.SetHold(true)
	_, ok = roundTrip(t, c, "held", 200*time.Millisecond)
	must.False(t, ok, must.Sprint("a held frame went through"))
	p.SetHold(false)
	must.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 4)
	_, err := io.ReadFull(c, buf)
	must.NoError(t, err)
	must.Eq(t, "held", string(buf))
}

// A cut closes open connections and black-holes new ones; healing it
// forwards new connections again.
func TestProxyCutBlackHolesThenHeals(t *testing.T) {
	p := serve(t, echo(t))
	c := dial(t, p)
	_, ok := roundTrip(t, c, "x", 5*time.Second)
	must.True(t, ok)

	p.SetCut(true)
	must.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err := c.Read(make([]byte, 1))
	must.Error(t, err, must.Sprint("an open connection survived the cut"))
	_, ok = roundTrip(t, dial(t, p), "y", 200*time.Millisecond)
	must.False(t, ok, must.Sprint("a connection made during the cut was forwarded"))

	p.SetCut(false)
	got, ok := roundTrip(t, dial(t, p), "z", 5*time.Second)
	must.True(t, ok)
	must.Eq(t, "z", got)
}

// With no target (the replica is down) a connection is closed at once.
func TestProxyWithoutTargetRefuses(t *testing.T) {
	p := serve(t, echo(t))
	p.SetTarget("")
	c := dial(t, p)
	_, ok := roundTrip(t, c, "x", 5*time.Second)
	must.False(t, ok)
}

// A delayed connection still delivers, in order.
func TestProxyDelayDelivers(t *testing.T) {
	p := serve(t, echo(t))
	p.SetDelay(5 * time.Millisecond)
	c := dial(t, p)
	for _, m := range []string{"a", "bb", "ccc"} {
		got, ok := roundTrip(t, c, m, 5*time.Second)
		must.True(t, ok)
		must.Eq(t, m, got)
	}
}
