package testcluster

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

// echo serves line echo on loopback until the test ends.
func echo(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must.NoError(t, err)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				s := bufio.NewScanner(c)
				for s.Scan() {
					c.Write([]byte(s.Text() + "\n"))
				}
			})
		}
	})
	return ln.Addr().String()
}

func roundTrip(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	_, err = bufio.NewReader(c).ReadString('\n')
	return err
}

func TestProxyCutBlackHolesAndRestoreForwards(t *testing.T) {
	p, err := NewProxy("127.0.0.1", echo(t))
	must.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	must.NoError(t, roundTrip(p.Addr(), 2*time.Second))
	// An open connection is dropped by the cut.
	open, err := net.Dial("tcp", p.Addr())
	must.NoError(t, err)
	defer open.Close()
	_, err = open.Write([]byte("x\n"))
	must.NoError(t, err)
	_, err = bufio.NewReader(open).ReadString('\n')
	must.NoError(t, err)
	p.Cut()
	open.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = open.Read(make([]byte, 1))
	must.Error(t, err)
	// New connections are accepted but nothing comes back: a timeout.
	err = roundTrip(p.Addr(), 300*time.Millisecond)
	var ne net.Error
	must.True(t, errors.As(err, &ne), must.Sprint(err))
	must.True(t, ne.Timeout())
	p.Restore()
	must.NoError(t, roundTrip(p.Addr(), 2*time.Second))
}
