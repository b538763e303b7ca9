package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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
// (in its own network namespace), both Saddlebag jobs run in their docker
// form (jobs/docker: the node plugin privileged), Postgres runs as a
// docker task on a replicated volume (jobs/examples/postgres-docker.nomad.hcl),
// and the node under it is killed: Postgres comes back on the other
// replica's node with every committed row. No registry is reachable, so
// the images are imported from this host's own Debian packages
// (image.Saddlebag, image.Postgres).
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
		out, err := c.NomadCLI(ctx, "job", "run", "-detach",
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
			out, err := nd.DockerCLI(ctx, "ps", "--format", "{{.Image}} {{.Command}}")
			must.NoError(t, err, must.Sprint(out))
			must.StrContains(t, out, "saddlebag:e2e", must.Sprintf("%s: %s", nd.Name, out))
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
