package cluster

import (
	"context"
	"testing"
	"time"
)

// New starts an instance for test t (a failure to start fails the test:
// a test that needs the cluster never passes without one) and tears it
// down in t.Cleanup, also when the test fails, printing the agents' log
// tails first. A teardown that leaves anything behind fails the test.
func New(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := Start(ctx, o)
	if err != nil {
		t.Fatalf("e2e cluster: %v", err)
	}
	t.Logf("e2e cluster %d up in %.1fs", c.Instance, time.Since(start).Seconds())
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpLogs(t.Logf)
			c.dumpStall(t.Logf)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Destroy(ctx); err != nil {
			t.Errorf("e2e cluster %d teardown: %v", c.Instance, err)
		}
	})
	return c
}

// DumpLogs writes the tail of every agent's log through logf.
func (c *Cluster) DumpLogs(logf func(string, ...any)) {
	if c.NomadServer != nil {
		logf("nomad server log tail:\n%s", c.NomadServer.LogTail(30))
	}
	if c.Consul != nil && c.Consul.Server != nil {
		logf("consul server log tail:\n%s", c.Consul.Server.LogTail(20))
	}
	for _, nd := range c.Nodes {
		if nd.Nomad != nil {
			logf("%s nomad client log tail:\n%s", nd.Name, nd.Nomad.LogTail(30))
		}
		if nd.Consul != nil {
			logf("%s consul agent log tail:\n%s", nd.Name, nd.Consul.LogTail(15))
		}
	}
}
