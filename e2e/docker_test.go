package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/e2e/cluster"
	"github.com/saddlebag/saddlebag/e2e/cluster/image"
)

// TestDockerForms is issue 15's docker scenario: every node runs dockerd
// (in its own network namespace), the three Saddlebag jobs run in their
// docker form (jobs/docker: the keeper, then the node plugin, both
// privileged, then the controller), Postgres runs as a docker task on a
// replicated volume (jobs/examples/postgres-docker.nomad.hcl). Under a
// commit every loadInterval, the saddlebag-node allocation on Postgres's
// node is restarted through Nomad's API and then its process SIGKILLed
// (issue 13 for the docker form): the keeper container watches the node
// container's process by its pid, every volume is adopted by the next
// node container and no commit fails (restartEvent prints each event's
// longest write stall). Then the node under Postgres is killed: Postgres
// comes back on the other replica's node with every committed row. No
// registry is reachable, so the images are imported from this host's own
// Debian packages (image.Saddlebag, image.Postgres).
func TestDockerForms(t *testing.T) {
	c := cluster.New(t, cluster.Options{Docker: true})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	napi, err := c.Nomad()
	must.NoError(t, err)
	capi, err := c.ConsulClient()
	must.NoError(t, err)
	root, err := filepath.Abs("..")
	must.NoError(t, err)
	t.Cleanup(func() { _, _ = c.NomadCLI(context.Background(), "job", "stop", "-purge", "postgres") })

	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	var primary *cluster.Node
	rows := 0

	step("images imported into every node's dockerd", func(t *testing.T) {
		start := time.Now()
		sb, err := image.Saddlebag(ctx, root, filepath.Join(c.Dir, "bin"), "saddlebag:e2e")
		must.NoError(t, err)
		must.NoError(t, c.ImportImage(ctx, sb))
		pg, err := image.Postgres("saddlebag-postgres:15")
		must.NoError(t, err)
		must.NoError(t, c.ImportImage(ctx, pg))
		t.Logf("images made and imported into %d dockerds in %.1fs", len(c.Nodes), time.Since(start).Seconds())
		out, err := c.Nodes[0].DockerCLI(ctx, "run", "--rm", "--network", "host", "saddlebag:e2e", "version")
		must.NoError(t, err, must.Sprint(out))
	})

	step("saddlebag's docker jobs: plugin healthy on every node", func(t *testing.T) {
		tokens, err := c.SaddlebagTokens(root)
		must.NoError(t, err)
		bin, err := c.BuildSaddlebag(ctx, root)
		must.NoError(t, err)
		_, err = c.SetupIntentions(ctx, bin, tokens["saddlebag-operator"])
		must.NoError(t, err)
		// The docker form bind-mounts the data and run directories:
		// they must exist on the host (an operator makes them once).
		for _, nd := range c.Nodes {
			must.NoError(t, os.MkdirAll(filepath.Join(nd.Dir, "run"), 0o755))
			must.NoError(t, os.MkdirAll(nd.DataDir, 0o755))
		}
		node := filepath.Join(c.Dir, "${node.unique.name}")
		// The descriptor keeper first, so that the node parks every
		// volume from its first stage.
		out, err := c.NomadCLI(ctx, "job", "run", "-detach",
			"-var", "image=saddlebag", "-var", "version=e2e",
			"-var", "run_dir="+filepath.Join(node, "run"),
			repoPath(t, "jobs/docker/saddlebag-keeper.nomad.hcl"))
		must.NoError(t, err, must.Sprint(out))
		out, err = c.NomadCLI(ctx, "job", "run", "-detach",
			"-var", "image=saddlebag", "-var", "version=e2e",
			"-var", "consul_token="+tokens["saddlebag-node"],
			"-var", "data_dir="+filepath.Join(node, "saddlebag"),
			"-var", "run_dir="+filepath.Join(node, "run"),
			"-var", `extra_args=["--label", "rack=$${node.unique.name}"]`,
			repoPath(t, "jobs/docker/saddlebag-node.nomad.hcl"))
		must.NoError(t, err, must.Sprint(out))
		out, err = c.NomadCLI(ctx, "job", "run", "-detach",
			"-var", "image=saddlebag", "-var", "version=e2e",
			"-var", "consul_token="+tokens["saddlebag-controller"],
			"-var", "count="+strconv.Itoa(cluster.ControllerCount),
			repoPath(t, "jobs/docker/saddlebag-controller.nomad.hcl"))
		must.NoError(t, err, must.Sprint(out))
		if err := c.WaitPlugin(ctx, cluster.ControllerCount, len(c.Nodes)); err != nil {
			st, _ := c.NomadCLI(ctx, "job", "status", "saddlebag-node")
			t.Fatalf("%v\n%s", err, st)
		}
		// They are containers of the nodes' dockerds.
		for _, nd := range c.Nodes {
			out, err := nd.DockerCLI(ctx, "ps", "--no-trunc", "--format", "{{.Image}} {{.Command}}")
			must.NoError(t, err, must.Sprint(out))
			must.StrContains(t, out, "saddlebag:e2e", must.Sprintf("%s: %s", nd.Name, out))
			must.StrContains(t, out, "/usr/local/bin/saddlebag keeper --socket", must.Sprintf("%s: %s", nd.Name, out))
		}
	})

	step("volume created; postgres as a docker task commits rows", func(t *testing.T) {
		out, err := c.NomadCLI(ctx, "volume", "create", filepath.Join("testdata", "volume-postgres.hcl"))
		must.NoError(t, err, must.Sprint(out))
		out, err = c.NomadCLI(ctx, "job", "run", "-detach", repoPath(t, "jobs/examples/postgres-docker.nomad.hcl"))
		must.NoError(t, err, must.Sprint(out))
		a := waitRunning(t, ctx, c, napi, "postgres", "postgres")
		primary = nodeNamed(t, c, a.NodeName)
		must.SliceContains(t, replicaNodes(t, ctx, capi), primary.Name)
		out, err = psql(ctx, primary.IP, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g; SELECT count(*) FROM t;")
		must.NoError(t, err, must.Sprint(out))
		must.Eq(t, "1000", tail(out, 1))
		rows = 1000
		ps, err := primary.DockerCLI(ctx, "ps", "--format", "{{.Image}}")
		must.NoError(t, err)
		must.StrContains(t, ps, "saddlebag-postgres:15", must.Sprint("postgres is not a container of ", primary.Name, ": ", ps))
		must.NoError(t, waitCheck(ctx, capi, primary.Name, "saddlebag-volume:"+volID, consulapi.HealthPassing))
	})

	step("docker saddlebag-node restarted and SIGKILLed under postgres's load: no commit fails", func(t *testing.T) {
		out, err := psql(ctx, primary.IP, "CREATE TABLE load (id int PRIMARY KEY, at timestamptz DEFAULT now())")
		must.NoError(t, err, must.Sprint(out))
		ld := startLoad(ctx, func() string { return postgresIP(ctx, c, napi) })
		defer ld.stop()
		time.Sleep(5 * time.Second) // a steady state to compare with
		fmt.Printf("docker_load_baseline_max_gap_seconds %.2f\n", ld.maxGap(time.Time{}, time.Now()).Seconds())
		// The keeper container watches the node container's process by
		// its pid: the keeper is in the host's pid namespace (where this
		// test is), so the peer credentials give that process's pid here.
		keeperWatches(ctx, t, c, napi, primary)
		t.Run("alloc restart", func(t *testing.T) {
			restartEvent(ctx, t, c, napi, ld, "docker_plugin_restart", func(nd *cluster.Node) error { return restartNodeAlloc(ctx, napi, nd) })
			keeperWatches(ctx, t, c, napi, primary)
		})
		t.Run("plugin SIGKILL", func(t *testing.T) {
			restartEvent(ctx, t, c, napi, ld, "docker_plugin_sigkill", killNodePlugin)
			keeperWatches(ctx, t, c, napi, primary)
		})
		ld.stop()
		checkAcked(ctx, t, postgresIP(ctx, c, napi), ld, "docker_load")
		// The volume was adopted from the keeper by each next node
		// container, not staged again.
		a, err := nodeAllocOn(ctx, napi, primary.Name)
		must.NoError(t, err)
		logs, err := c.NomadCLI(ctx, "alloc", "logs", "-stderr", a.ID, "node")
		must.NoError(t, err)
		adopted := strings.Count(logs, "volume adopted from the previous node process")
		fmt.Printf("docker_volume_adoptions %d\n", adopted)
		must.Eq(t, 2, adopted, must.Sprint(lineWith(logs, "adopt")))
	})

	step("kill the node under postgres: back on the other replica with every row", func(t *testing.T) {
		dead := primary
		other := otherReplica(t, ctx, c, capi, dead.Name)
		out, err := psql(ctx, dead.IP, "INSERT INTO t VALUES (1001, 'last before kill')")
		must.NoError(t, err, must.Sprint(out))
		rows++
		t0, err := dead.Kill()
		must.NoError(t, err)
		ready, err := waitQuery(ctx, other.IP, 3*time.Minute)
		if err != nil {
			st, _ := c.NomadCLI(ctx, "job", "status", "postgres")
			t.Fatalf("postgres not back on %s: %v\n%s", other.Name, err, st)
		}
		fmt.Printf("docker_failover_seconds %.2f\n", ready.Sub(t0).Seconds())
		out, err = psql(ctx, other.IP, "SELECT count(*), max(id) FROM t")
		must.NoError(t, err, must.Sprint(out))
		must.Eq(t, fmt.Sprintf("%d|%d", rows, rows), strings.TrimSpace(out))
		allocs, _, err := napi.Jobs().Allocations("postgres", false, nil)
		must.NoError(t, err)
		running := 0
		for _, a := range allocs {
			if a.ClientStatus == nomadapi.AllocClientStatusRunning {
				running++
				must.Eq(t, other.Name, a.NodeName)
			}
		}
		must.Eq(t, 1, running)
		ps, err := other.DockerCLI(ctx, "ps", "--format", "{{.Image}}")
		must.NoError(t, err)
		must.StrContains(t, ps, "saddlebag-postgres:15")
	})
}

// watchingRe is the keeper's log line for a node process it watches.
var watchingRe = regexp.MustCompile(`watching node process.* pid=([0-9]+) `)

// keeperWatches checks that the keeper container on nd watches nd's
// current `saddlebag node` process (the node container's) by its pid in
// the host's pid namespace, and has logged neither that it cannot watch
// a node nor that it cannot reach fusectl.
func keeperWatches(ctx context.Context, t *testing.T, c *cluster.Cluster, napi *nomadapi.Client, nd *cluster.Node) {
	t.Helper()
	a, err := jobAllocOn(ctx, napi, "saddlebag-keeper", nd.Name)
	must.NoError(t, err)
	var pid int
	var logs string
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for {
		pid, err = saddlebagPID(nd, "node")
		if err == nil {
			logs, err = c.NomadCLI(ctx, "alloc", "logs", "-stderr", a.ID, "keeper")
		}
		if err == nil {
			for _, m := range watchingRe.FindAllStringSubmatch(logs, -1) {
				if m[1] == strconv.Itoa(pid) {
					for _, bad := range []string{"is not visible in the keeper's pid namespace", "cannot be read", "cannot be aborted from here"} {
						must.StrNotContains(t, logs, bad, must.Sprint(lineWith(logs, bad)))
					}
					t.Logf("the keeper on %s watches node process %d (seen after %.1fs)", nd.Name, pid, time.Since(start).Seconds())
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the keeper on %s does not watch its node process %d: %v\n%s", nd.Name, pid, err, logs)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
