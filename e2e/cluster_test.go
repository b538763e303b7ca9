package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/e2e/cluster"
)

// TestCluster brings the three-node cluster up and checks, as an operator
// would through the CLIs and APIs, that it is what the Saddlebag
// scenarios need: three ready Nomad clients with raw_exec and exec, three
// Consul client agents, jobs running on both drivers, a partition that
// cuts a node off and heals without leaving a rule behind, and a killed
// node that Nomad marks down (timed) and that comes back.
func TestCluster(t *testing.T) {
	c := cluster.New(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	napi, err := c.Nomad()
	must.NoError(t, err)
	capi, err := c.ConsulClient()
	must.NoError(t, err)

	t.Run("nomad shows three ready clients with raw_exec and exec", func(t *testing.T) {
		out, err := c.NomadCLI(ctx, "node", "status", "-verbose")
		must.NoError(t, err)
		for _, nd := range c.Nodes {
			line := lineWith(out, " "+nd.Name+" ")
			must.StrContains(t, line, "ready", must.Sprintf("nomad node status:\n%s", out))
			must.StrContains(t, line, nd.IP)
		}
		for _, nd := range c.Nodes {
			id, err := nd.NodeID(ctx)
			must.NoError(t, err)
			out, err := c.NomadCLI(ctx, "node", "status", "-verbose", id)
			must.NoError(t, err)
			// The Drivers table: name, detected, healthy, ...
			for _, d := range []string{"raw_exec", "exec"} {
				f := strings.Fields(lineWith(out, "\n"+d+" "))
				must.True(t, len(f) >= 3 && f[1] == "true" && f[2] == "true", must.Sprintf("%s: driver %s not detected and healthy:\n%s", nd.Name, d, out))
			}
		}
	})

	t.Run("nomad clients probe no cloud metadata", func(t *testing.T) {
		for _, nd := range c.Nodes {
			env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", nd.Nomad.PID()))
			must.NoError(t, err)
			must.StrNotContains(t, "\x00"+string(env), "\x00AWS_CA_BUNDLE=")
			self, err := nodeAgentSelf(nd)
			must.NoError(t, err)
			client, _ := self.Config["Client"].(map[string]any)
			opts, _ := client["Options"].(map[string]any)
			must.Eq(t, "env_aws,env_gce,env_azure,env_digitalocean", opts["fingerprint.denylist"], must.Sprint(client))
		}
	})

	t.Run("consul shows the three client agents", func(t *testing.T) {
		out, err := c.ConsulCLI(ctx, "members")
		must.NoError(t, err)
		for _, nd := range c.Nodes {
			line := lineWith(out, nd.Name+" ")
			must.StrContains(t, line, "alive", must.Sprintf("consul members:\n%s", out))
			must.StrContains(t, line, "client")
			must.StrContains(t, line, nd.IP)
			must.NoError(t, serfHealth(ctx, capi, nd.Name, consulapi.HealthPassing))
		}
	})

	t.Run("a raw_exec job runs on every node, as root, in the node's namespace", func(t *testing.T) {
		allocs := runJob(t, ctx, c, napi, "hello-raw-exec", len(c.Nodes))
		for _, a := range allocs {
			nd := nodeNamed(t, c, a.NodeName)
			out, err := c.NomadCLI(ctx, "alloc", "logs", a.ID, "hello")
			must.NoError(t, err)
			var st syscall.Stat_t
			must.NoError(t, syscall.Stat(filepath.Join("/run/netns", nd.Netns), &st))
			must.Eq(t, fmt.Sprintf("node=%s uid=0 netns=net:[%d]", nd.Name, st.Ino), strings.TrimSpace(out))
		}
	})

	t.Run("an exec job runs isolated, as nobody", func(t *testing.T) {
		start := time.Now()
		allocs := runJob(t, ctx, c, napi, "hello-exec", 1)
		t.Logf("exec job ran in %.1fs (includes building its chroot)", time.Since(start).Seconds())
		out, err := c.NomadCLI(ctx, "alloc", "logs", allocs[0].ID, "hello")
		must.NoError(t, err)
		must.StrContains(t, out, "node="+allocs[0].NodeName+" uid=65534 ")
		// Its root is the task's chroot (alloc, local, secrets), not the host's.
		must.StrContains(t, out, "alloc,")
		must.StrContains(t, out, "secrets,")
	})

	t.Run("the example Postgres job runs on exec and commits rows", func(t *testing.T) {
		// Without a volume until the CSI plugin is deployed here: this
		// checks the job's own part (exec driver, the postgres user,
		// initdb once, listening on the node's address).
		out, err := c.NomadCLI(ctx, "job", "run", "-detach", "-var", "volume=", repoPath(t, "jobs/examples/postgres.nomad.hcl"))
		must.NoError(t, err, must.Sprint(out))
		t.Cleanup(func() { _, _ = c.NomadCLI(context.Background(), "job", "stop", "-purge", "postgres") })
		a := waitRunning(t, ctx, c, napi, "postgres", "postgres")
		nd := nodeNamed(t, c, a.NodeName)
		out, err = psql(ctx, nd.IP, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g; SELECT count(*) FROM t;")
		must.NoError(t, err, must.Sprint(out))
		must.StrContains(t, out, "100")
	})

	t.Run("partition cuts a node off and heal restores it, leaving no rules", func(t *testing.T) {
		nd, other := c.Nodes[1], c.Nodes[0]
		id, err := nd.NodeID(ctx)
		must.NoError(t, err)
		consulPID, nomadPID := nd.Consul.PID(), nd.Nomad.PID()
		must.NoError(t, dialNode(ctx, nil, nd.IP))
		must.NoError(t, dialNode(ctx, other, nd.IP))

		t0 := time.Now()
		must.NoError(t, nd.Partition(ctx))
		t.Cleanup(func() { _ = nd.Heal(context.Background()) })
		rules, err := nd.FilterRules(ctx)
		must.NoError(t, err)
		must.Len(t, 2, rules, must.Sprint(rules))
		must.Error(t, dialNode(ctx, nil, nd.IP), must.Sprint("the host still reaches the cut-off node"))
		must.Error(t, dialNode(ctx, other, nd.IP), must.Sprint("another node still reaches the cut-off node"))
		// Nor does the cut-off node reach anything (a dropped SYN is
		// retried for minutes, hence the timeout); its own agent still
		// answers it.
		_, err = nd.Exec(ctx, "timeout", "2", "bash", "-c", "exec 3<>/dev/tcp/"+strings.Split(c.NomadAddr, ":")[0]+"/4646")
		must.Error(t, err)
		_, err = nd.Exec(ctx, "timeout", "2", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8500")
		must.NoError(t, err)

		wctx, wcancel := context.WithTimeout(ctx, 90*time.Second)
		down, err := nd.WaitNodeStatus(wctx, id, nomadapi.NodeStatusDown)
		wcancel()
		must.NoError(t, err)
		fmt.Printf("nomad_node_down_seconds_partition %.2f\n", down.Sub(t0).Seconds())
		must.NoError(t, waitSerfHealth(ctx, capi, nd.Name, consulapi.HealthCritical))
		// Cut off, not dead: the same processes still run.
		must.Eq(t, consulPID, nd.Consul.PID())
		must.Eq(t, nomadPID, nd.Nomad.PID())

		must.NoError(t, nd.Heal(ctx))
		rules, err = nd.FilterRules(ctx)
		must.NoError(t, err)
		must.SliceEmpty(t, rules)
		must.NoError(t, dialNode(ctx, other, nd.IP))
		must.NoError(t, c.WaitNodesReady(ctx, nd))
		must.NoError(t, waitSerfHealth(ctx, capi, nd.Name, consulapi.HealthPassing))
	})

	t.Run("a killed node is marked down, loses its tasks, and comes back", func(t *testing.T) {
		runJob(t, ctx, c, napi, "sleeper", len(c.Nodes))
		nd := c.Nodes[2]
		id, err := nd.NodeID(ctx)
		must.NoError(t, err)
		pids, err := nd.PIDs()
		must.NoError(t, err)
		must.Greater(t, 3, len(pids), must.Sprint("consul, nomad, and the sleeper task (with its executor) run in the node"))

		t0, err := nd.Kill()
		must.NoError(t, err)
		pids, err = nd.PIDs()
		must.NoError(t, err)
		must.SliceEmpty(t, pids, must.Sprint("processes of the killed node survive"))
		wctx, wcancel := context.WithTimeout(ctx, 90*time.Second)
		down, err := nd.WaitNodeStatus(wctx, id, nomadapi.NodeStatusDown)
		wcancel()
		must.NoError(t, err)
		fmt.Printf("nomad_node_down_seconds %.2f\n", down.Sub(t0).Seconds())
		must.NoError(t, waitSerfHealth(ctx, capi, nd.Name, consulapi.HealthCritical))
		must.NoError(t, waitAlloc(ctx, napi, "sleeper", nd.Name, nomadapi.AllocClientStatusLost))

		must.NoError(t, nd.Restart(ctx))
		must.NoError(t, waitSerfHealth(ctx, capi, nd.Name, consulapi.HealthPassing))
		must.NoError(t, waitAlloc(ctx, napi, "sleeper", nd.Name, nomadapi.AllocClientStatusRunning))
	})

	t.Run("the Saddlebag jobs place as asked", func(t *testing.T) {
		out, _ := c.NomadCLI(ctx, "job", "plan", repoPath(t, "jobs/saddlebag-controller.nomad.hcl"))
		must.StrContains(t, out, `Task Group: "controller" (2 create)`, must.Sprint(out))
		must.StrContains(t, out, "All tasks successfully allocated")
		out, _ = c.NomadCLI(ctx, "job", "plan", repoPath(t, "jobs/saddlebag-node.nomad.hcl"))
		must.StrContains(t, out, fmt.Sprintf(`Task Group: "node" (%d create)`, len(c.Nodes)), must.Sprint(out))
		must.StrContains(t, out, "All tasks successfully allocated")
	})
}

// runJob submits testdata/<name>.nomad.hcl with `nomad job run` and waits
// until want allocations have finished (batch) or are running (service,
// system), returning them.
func runJob(t *testing.T, ctx context.Context, c *cluster.Cluster, napi *nomadapi.Client, name string, want int) []*nomadapi.AllocationListStub {
	t.Helper()
	out, err := c.NomadCLI(ctx, "job", "run", "-detach", filepath.Join("testdata", name+".nomad.hcl"))
	must.NoError(t, err, must.Sprint(out))
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		allocs, _, err := napi.Jobs().Allocations(name, false, (&nomadapi.QueryOptions{}).WithContext(wctx))
		must.NoError(t, err)
		done := 0
		for _, a := range allocs {
			switch a.ClientStatus {
			case nomadapi.AllocClientStatusComplete, nomadapi.AllocClientStatusRunning:
				done++
			case nomadapi.AllocClientStatusFailed:
				st, _ := c.NomadCLI(ctx, "alloc", "status", a.ID)
				t.Fatalf("job %s: allocation %s failed:\n%s", name, a.ID, st)
			}
		}
		if done >= want {
			return allocs
		}
		select {
		case <-wctx.Done():
			st, _ := c.NomadCLI(ctx, "job", "status", name)
			t.Fatalf("job %s: %d of %d allocations done: %v\n%s", name, done, want, wctx.Err(), st)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitRunning waits until job's task is running and its Consul service
// check passes (Postgres accepts connections), and returns the allocation.
func waitRunning(t *testing.T, ctx context.Context, c *cluster.Cluster, napi *nomadapi.Client, job, service string) *nomadapi.AllocationListStub {
	t.Helper()
	capi, err := c.ConsulClient()
	must.NoError(t, err)
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		allocs, _, err := napi.Jobs().Allocations(job, false, (&nomadapi.QueryOptions{}).WithContext(wctx))
		must.NoError(t, err)
		for _, a := range allocs {
			if a.ClientStatus == nomadapi.AllocClientStatusFailed {
				st, _ := c.NomadCLI(ctx, "alloc", "status", a.ID)
				logs, _ := c.NomadCLI(ctx, "alloc", "logs", "-stderr", a.ID, service)
				t.Fatalf("job %s: allocation failed:\n%s\n%s", job, st, logs)
			}
			if a.ClientStatus != nomadapi.AllocClientStatusRunning {
				continue
			}
			entries, _, err := capi.Health().Service(service, "", true, (&consulapi.QueryOptions{}).WithContext(wctx))
			if err == nil && len(entries) > 0 {
				return a
			}
		}
		select {
		case <-wctx.Done():
			st, _ := c.NomadCLI(ctx, "job", "status", job)
			t.Fatalf("job %s not running with a passing %s check: %v\n%s", job, service, wctx.Err(), st)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// psql runs SQL against the example Postgres job on ip with the real
// client, over TCP with the job's password.
func psql(ctx context.Context, ip, sql string) (string, error) {
	cmd := exec.CommandContext(ctx, "psql", "-X", "-v", "ON_ERROR_STOP=1", "-At",
		"host="+ip+" port=5432 user=postgres dbname=postgres connect_timeout=5", "-c", sql)
	cmd.Env = append(os.Environ(), "PGPASSWORD=saddlebag")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// waitAlloc waits until job has an allocation on node in status want.
func waitAlloc(ctx context.Context, napi *nomadapi.Client, job, node, want string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		allocs, _, err := napi.Jobs().Allocations(job, true, (&nomadapi.QueryOptions{}).WithContext(ctx))
		if err == nil {
			for _, a := range allocs {
				if a.NodeName == node && a.ClientStatus == want {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("job %s: no %s allocation on %s: %w", job, want, node, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// nodeAgentSelf asks the node's own Nomad client for its configuration.
func nodeAgentSelf(nd *cluster.Node) (*nomadapi.AgentSelf, error) {
	api, err := nomadapi.NewClient(&nomadapi.Config{Address: "http://" + net.JoinHostPort(nd.IP, "4646")})
	if err != nil {
		return nil, err
	}
	return api.Agent().Self()
}

func serfHealth(ctx context.Context, capi *consulapi.Client, node, want string) error {
	checks, _, err := capi.Health().Node(node, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	for _, ch := range checks {
		if ch.CheckID == "serfHealth" {
			if ch.Status != want {
				return fmt.Errorf("consul: %s serfHealth is %s, want %s", node, ch.Status, want)
			}
			return nil
		}
	}
	return fmt.Errorf("consul: %s has no serfHealth check", node)
}

func waitSerfHealth(ctx context.Context, capi *consulapi.Client, node, want string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		err := serfHealth(ctx, capi, node, want)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// dialNode connects to ip's Consul agent (port 8500) from the host
// (from == nil) or from inside another node.
func dialNode(ctx context.Context, from *cluster.Node, ip string) error {
	addr := net.JoinHostPort(ip, "8500")
	if from == nil {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			conn.Close()
		}
		return err
	}
	_, err := from.Exec(ctx, "timeout", "2", "bash", "-c", "exec 3<>/dev/tcp/"+ip+"/8500")
	return err
}

func nodeNamed(t *testing.T, c *cluster.Cluster, name string) *cluster.Node {
	t.Helper()
	for _, nd := range c.Nodes {
		if nd.Name == name {
			return nd
		}
	}
	t.Fatalf("no node %q", name)
	return nil
}

// lineWith returns the first line of out containing sub; a sub starting
// with a newline matches at the start of a line.
func lineWith(out, sub string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains("\n"+l, sub) {
			return l
		}
	}
	return ""
}

// repoPath is a path relative to the repository root (this package's
// parent directory).
func repoPath(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", rel))
	must.NoError(t, err)
	_, err = os.Stat(p)
	must.NoError(t, err)
	return p
}
