package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/e2e/cluster"
	"github.com/saddlebag/saddlebag/e2e/cluster/timeline"
)

const volID = "postgres"

// The passphrase of e2e/testdata/volume-postgres.hcl, and a marker row
// the replicas' data files must never hold in clear.
const (
	passphrase = "e2e passphrase, not a secret in a test"
	markerRow  = "saddlebag-e2e-plaintext-marker-1b7e40c2"
)

// TestSaddlebag is issue 7's operator session, one step after another on
// one cluster: deploy Saddlebag with `nomad job run`, create a 2-replica
// volume with `nomad volume create`, run Postgres on it, kill the node
// under it (timed failover), bring that node back (resync), cut the
// primary's node off (fencing, no divergence), drain the primary's node,
// restage with a wrong passphrase (refused) and the right one, and
// delete the volume. The volume is encrypted at rest (issue 11): the
// replicas' data files never hold a committed row in clear. Each step
// needs the ones before it, so the first failure ends the test.
func TestSaddlebag(t *testing.T) {
	c := cluster.New(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	napi, err := c.Nomad()
	must.NoError(t, err)
	capi, err := c.ConsulClient()
	must.NoError(t, err)
	root, err := filepath.Abs("..")
	must.NoError(t, err)

	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	// Stopped before the cluster goes (cleanups run last first), so that
	// a failed run still unstages cleanly where it can.
	t.Cleanup(func() { _, _ = c.NomadCLI(context.Background(), "job", "stop", "-purge", "postgres") })
	var rows int // rows committed so far
	var primary *cluster.Node
	var bin string // the saddlebag binary the jobs run

	step("deploy: plugin healthy, volume created, checks passing", func(t *testing.T) {
		var err error
		bin, err = c.BuildSaddlebag(ctx, root)
		must.NoError(t, err)
		must.NoError(t, c.DeploySaddlebag(ctx, root, bin))
		out, err := c.NomadCLI(ctx, "plugin", "status", cluster.PluginID)
		must.NoError(t, err)
		must.RegexMatch(t, regexpLine(`Controllers Healthy\s*=\s*`+strconv.Itoa(cluster.ControllerCount)), out, must.Sprint(out))
		must.RegexMatch(t, regexpLine(`Nodes Healthy\s*=\s*3`), out, must.Sprint(out))
		must.StrContains(t, out, "csi.saddlebag.io")

		for _, nd := range c.Nodes {
			must.NoError(t, waitCheck(ctx, capi, nd.Name, "saddlebag-node-"+nd.Name+":ttl", consulapi.HealthPassing))
		}
		out, err = c.NomadCLI(ctx, "volume", "create", filepath.Join("testdata", "volume-postgres.hcl"))
		must.NoError(t, err, must.Sprint(out))
		t.Logf("nomad volume create:\n%s", out)
		out, err = c.NomadCLI(ctx, "volume", "status", volID)
		must.NoError(t, err)
		must.RegexMatch(t, regexpLine(`ID\s*=\s*postgres`), out, must.Sprint(out))
		must.RegexMatch(t, regexpLine(`Plugin ID\s*=\s*saddlebag`), out)
		must.RegexMatch(t, regexpLine(`Schedulable\s*=\s*true`), out)
		rec := volumeRecord(t, ctx, capi)
		must.Eq(t, "ready", rec.State)
		must.Len(t, 2, rec.Replicas)
		must.NotEq(t, rec.Replicas[0].Node, rec.Replicas[1].Node)
		for _, r := range rec.Replicas {
			_, err := os.Stat(filepath.Join(nodeNamed(t, c, r.Node).DataDir, volID, "data"))
			must.NoError(t, err, must.Sprintf("replica on %s", r.Node))
		}
	})

	step("postgres on the volume commits rows; volume check passing", func(t *testing.T) {
		out, err := c.NomadCLI(ctx, "job", "run", "-detach", repoPath(t, "jobs/examples/postgres.nomad.hcl"))
		must.NoError(t, err, must.Sprint(out))
		start := time.Now()
		a := waitRunning(t, ctx, c, napi, "postgres", "postgres")
		t.Logf("postgres running on %s after %.1fs (first start: mkfs, initdb)", a.NodeName, time.Since(start).Seconds())
		primary = nodeNamed(t, c, a.NodeName)
		must.SliceContains(t, replicaNodes(t, ctx, capi), primary.Name)
		out, err = psql(ctx, primary.IP, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g; SELECT count(*) FROM t;")
		must.NoError(t, err, must.Sprint(out))
		must.Eq(t, "1000", tail(out, 1))
		rows = 1000
		// The volume is encrypted: a committed row (in the WAL, and after
		// the checkpoint in the table's pages) is on both replicas, never
		// in clear.
		out, err = psql(ctx, primary.IP, "CREATE TABLE marker (v text); INSERT INTO marker SELECT '"+markerRow+"' FROM generate_series(1, 100); CHECKPOINT")
		must.NoError(t, err, must.Sprint(out))
		noPlaintext(t, c, replicaNodes(t, ctx, capi))
		must.NoError(t, waitCheck(ctx, capi, primary.Name, "saddlebag-volume:"+volID, consulapi.HealthPassing))
		holder, err := cluster.PrimaryNode(ctx, capi, volID)
		must.NoError(t, err)
		must.Eq(t, primary.Name, holder)
	})

	var dead *cluster.Node
	// Every node's metrics, scraped each second from before the kill
	// until the dead node's replica is back in sync: the volume's in-sync
	// count must drop and recover (issue 15).
	var metrics *metricsWatch
	t.Cleanup(func() {
		if metrics != nil {
			metrics.stop()
		}
	})
	step("kill the primary's node: postgres back on the other replica with every row", func(t *testing.T) {
		dead = primary
		other := otherReplica(t, ctx, c, capi, dead.Name)
		metrics = watchVolumeMetrics(ctx, c.Nodes, volID, time.Second)
		must.Wait(t, until(30*time.Second, func() bool {
			return slices.ContainsFunc(metrics.seen(), func(s metricSample) bool { return s.wanted > 0 && s.inSync == s.wanted })
		}), must.Sprintf("no scrape of %s's metrics shows the volume fully in sync before the kill:\n%s", primary.Name, metrics.changes()))
		id, err := dead.NodeID(ctx)
		must.NoError(t, err)
		// One more committed row, the instant before the kill.
		out, err := psql(ctx, dead.IP, "INSERT INTO t VALUES (1001, 'last before kill')")
		must.NoError(t, err, must.Sprint(out))
		rows++

		downCh := make(chan time.Time, 1)
		t0, err := dead.Kill()
		must.NoError(t, err)
		tl := timeline.Watch(t0, timeline.Config{Nomad: napi, Consul: capi, Volume: volID, Job: "postgres",
			Node: dead.Name, NodeID: id, Dir: c.Dir})
		go func() {
			wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			down, _ := dead.WaitNodeStatus(wctx, id, nomadapi.NodeStatusDown)
			downCh <- down
		}()
		ready, err := waitQuery(ctx, other.IP, 2*time.Minute)
		if err != nil {
			tl.Stop(ctx)
			tl.Print(os.Stdout, "failover_timeline")
		}
		must.NoError(t, err)
		tl.Add(ready, "first query answered on "+other.Name)
		tl.Stop(ctx)
		down := <-downCh
		must.False(t, down.IsZero(), must.Sprint("nomad never marked the killed node down"))
		fmt.Printf("failover_seconds %.2f\n", ready.Sub(t0).Seconds())
		fmt.Printf("nomad_node_down_seconds %.2f\n", down.Sub(t0).Seconds())
		printFigures(tl, "")
		tl.Print(os.Stdout, "failover_timeline")

		out, err = psql(ctx, other.IP, "SELECT count(*), max(id) FROM t")
		must.NoError(t, err, must.Sprint(out))
		must.Eq(t, fmt.Sprintf("%d|%d", rows, rows), strings.TrimSpace(out))
		holder, err := cluster.PrimaryNode(ctx, capi, volID)
		must.NoError(t, err)
		must.Eq(t, other.Name, holder)
		primary = other
		// One replica of two: degraded, which the volume check says.
		must.NoError(t, waitCheck(ctx, capi, primary.Name, "saddlebag-volume:"+volID, consulapi.HealthWarning))
	})

	step("the dead node returns: its replica resyncs and the volume is healthy", func(t *testing.T) {
		out, err := psql(ctx, primary.IP, "INSERT INTO t SELECT g, 'while away ' || g FROM generate_series(1002, 1500) g")
		must.NoError(t, err, must.Sprint(out))
		rows = 1500
		start := time.Now()
		// The operator's view while the replica comes back, from Consul.
		st := watchStatus(ctx, c, bin, volID, 300*time.Millisecond)
		must.NoError(t, dead.Restart(ctx))
		must.NoError(t, c.WaitPlugin(ctx, cluster.ControllerCount, len(c.Nodes)))
		must.NoError(t, waitCheck(ctx, capi, primary.Name, "saddlebag-volume:"+volID, consulapi.HealthPassing))
		t.Logf("volume healthy %.1fs after the restart began", time.Since(start).Seconds())
		during, reads := st.stop()
		if during != "" {
			fmt.Printf("saddlebag_status_during_resync:\n%s", during)
		} else {
			fmt.Printf("saddlebag_status_during_resync: none of %d reads caught the resync\n", reads)
		}
		names := []string{primary.Name, dead.Name}
		slices.Sort(names)
		must.Wait(t, until(30*time.Second, func() bool {
			out, err := runStatus(ctx, c, bin, volID)
			return err == nil && strings.Contains(out, "health   healthy: in sync 2 of 2: "+strings.Join(names, ", "))
		}), must.Sprint("saddlebag status never showed the volume healthy with both nodes in sync"))
		out, err = runStatus(ctx, c, bin)
		must.NoError(t, err)
		fmt.Printf("saddlebag_status_after_resync:\n%s", out)
		must.StrContains(t, out, "primary  "+primary.Name+", epoch ")
		must.Wait(t, until(30*time.Second, func() bool {
			_, _, ok := dropAndRecovery(metrics.seen())
			return ok
		}), must.Sprintf("the scraped metrics do not show the in-sync count drop and recover:\n%s", metrics.changes()))
		metrics.stop()
		dropped, recovered, _ := dropAndRecovery(metrics.seen())
		fmt.Printf("failover_metrics in-sync count over the kill and the return (scraped from every node each second):\n%s", metrics.changes())
		fmt.Printf("failover_metrics_in_sync_dropped_seconds %.1f\nfailover_metrics_in_sync_recovered_seconds %.1f\n",
			dropped.Sub(metrics.t0).Seconds(), recovered.Sub(metrics.t0).Seconds())
		metrics = nil
		ins := inSync(t, ctx, capi)
		must.SliceContains(t, ins, replicaAddr(dead), must.Sprintf("in-sync record %v", ins))
		must.SliceContains(t, ins, replicaAddr(primary))
		// What resync copied to the returning replica is ciphertext too.
		out, err = psql(ctx, primary.IP, "INSERT INTO marker VALUES ('"+markerRow+"'); CHECKPOINT")
		must.NoError(t, err, must.Sprint(out))
		noPlaintext(t, c, []string{dead.Name, primary.Name})
	})

	step("partition the primary's node: rescheduled, the cut-off side fenced, nothing diverges", func(t *testing.T) {
		cut := primary
		other := otherReplica(t, ctx, c, capi, cut.Name)
		nodeAllocLogs := saddlebagNodeLogs(t, ctx, napi, cut)
		cutID, err := cut.NodeID(ctx)
		must.NoError(t, err)
		t0 := time.Now()
		must.NoError(t, cut.Partition(ctx))
		t.Cleanup(func() { _ = cut.Heal(context.Background()) })
		tl := timeline.Watch(t0, timeline.Config{Nomad: napi, Consul: capi, Volume: volID, Job: "postgres",
			Node: cut.Name, NodeID: cutID, Dir: c.Dir})

		// A client on the cut-off node itself still reaches its Postgres;
		// the write it sends must never be acknowledged.
		cutWrite := make(chan error, 1)
		go func() {
			out, err := cut.Exec(ctx, "timeout", "60", "env", "PGPASSWORD=saddlebag", "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
				"host="+cut.IP+" port=5432 user=postgres dbname=postgres connect_timeout=5",
				"-c", "INSERT INTO t VALUES (999999, 'written on the cut-off side')")
			if err == nil {
				err = fmt.Errorf("accepted: %s", out)
			} else {
				err = nil
			}
			cutWrite <- err
		}()

		ready, err := waitQuery(ctx, other.IP, 2*time.Minute)
		if err != nil {
			tl.Stop(ctx)
			tl.Print(os.Stdout, "failover_timeline_partition")
			vol, _, verr := napi.CSIVolumes().Info(volID, nil)
			if verr == nil {
				for _, a := range vol.Allocations {
					fmt.Printf("failover_timeline_partition claim held by alloc %s on %s (%s/%s)\n", a.ID[:8], a.NodeName, a.DesiredStatus, a.ClientStatus)
				}
			}
		}
		must.NoError(t, err)
		tl.Add(ready, "first query answered on "+other.Name)
		fmt.Printf("failover_seconds_partition %.2f\n", ready.Sub(t0).Seconds())
		must.NoError(t, <-cutWrite, must.Sprint("the cut-off primary acknowledged a write"))
		tl.Stop(ctx)
		printFigures(tl, "_partition")
		tl.Print(os.Stdout, "failover_timeline_partition")
		// The guarantee, in the cut-off node's own log against the new
		// primary's (one host, one clock): the old primary stopped
		// completing I/O (held it, or was fenced) before the new one
		// served.
		stopped, ok := firstOf(tl, "saddlebag node on "+cut.Name+": ", "holding I/O", "lease lost", "fenced by the controller")
		must.True(t, ok, must.Sprintf("%s's log never says it held or fenced its I/O", cut.Name))
		serving, ok := firstOf(tl, "saddlebag node on "+other.Name+": ", "serving as primary")
		must.True(t, ok, must.Sprintf("%s's log never says it serves", other.Name))
		fmt.Printf("partition_old_primary_stopped_seconds %.2f\npartition_new_primary_serving_seconds %.2f\n",
			stopped.At.Sub(t0).Seconds(), serving.At.Sub(t0).Seconds())
		must.True(t, stopped.At.Before(serving.At), must.Sprintf("the cut-off primary stopped I/O at %s, after the new one served at %s",
			stopped.At.Format(time.StampMilli), serving.At.Format(time.StampMilli)))
		out, err := psql(ctx, other.IP, "SELECT count(*), count(*) FILTER (WHERE id = 999999) FROM t")
		must.NoError(t, err, must.Sprint(out))
		must.Eq(t, fmt.Sprintf("%d|0", rows), strings.TrimSpace(out))
		must.NoError(t, cut.Heal(ctx))
		// Back in touch, the cut-off node's agent finds its lease taken
		// and fences its engine (read from the node's disk).
		must.Wait(t, until(time.Minute, func() bool {
			return strings.Contains(nodeAllocLogs(), "fenced")
		}), must.Sprintf("%s's saddlebag node log never says fenced:\n%s", cut.Name, tail(nodeAllocLogs(), 20)))
		must.NoError(t, c.WaitNodesReady(ctx, cut))
		primary = other
		must.NoError(t, waitCheck(ctx, capi, primary.Name, "saddlebag-volume:"+volID, consulapi.HealthPassing))
		ins := inSync(t, ctx, capi)
		must.SliceContains(t, ins, replicaAddr(cut), must.Sprintf("in-sync record %v", ins))
		out, err = psql(ctx, primary.IP, "SELECT count(*), count(*) FILTER (WHERE id = 999999) FROM t")
		must.NoError(t, err, must.Sprint(out))
		must.Eq(t, fmt.Sprintf("%d|0", rows), strings.TrimSpace(out))
	})

	step("drain the primary's node: clean unstage there, stage on the other, no data loss", func(t *testing.T) {
		drained := primary
		other := otherReplica(t, ctx, c, capi, drained.Name)
		id, err := drained.NodeID(ctx)
		must.NoError(t, err)
		t0 := time.Now()
		// The node plugin stays (-ignore-system): it unstages the volume.
		out, err := c.NomadCLI(ctx, "node", "drain", "-enable", "-yes", "-ignore-system", "-deadline", "2m", id)
		must.NoError(t, err, must.Sprint(out))
		t.Cleanup(func() { _, _ = c.NomadCLI(context.Background(), "node", "eligibility", "-enable", id) })
		ready, err := waitQuery(ctx, other.IP, 2*time.Minute)
		must.NoError(t, err)
		fmt.Printf("drain_move_seconds %.2f\n", ready.Sub(t0).Seconds())
		out, err = psql(ctx, other.IP, "SELECT count(*) FROM t")
		must.NoError(t, err, must.Sprint(out))
		must.Eq(t, strconv.Itoa(rows), strings.TrimSpace(out))
		holder, err := cluster.PrimaryNode(ctx, capi, volID)
		must.NoError(t, err)
		must.Eq(t, other.Name, holder)
		// Clean: the drained node unstaged, leaving nothing mounted.
		logs := saddlebagNodeLogs(t, ctx, napi, drained)
		must.StrContains(t, logs(), "volume unstaged")
		mounts := csiMounts(t, drained)
		must.SliceEmpty(t, mounts, must.Sprintf("%s still has mounts of the volume", drained.Name))
		out, err = c.NomadCLI(ctx, "node", "eligibility", "-enable", id)
		must.NoError(t, err, must.Sprint(out))
		primary = other
		must.NoError(t, waitCheck(ctx, capi, primary.Name, "saddlebag-volume:"+volID, consulapi.HealthPassing))
	})

	step("a wrong passphrase: the stage is refused, clearly and without taking the lease; the right one serves again", func(t *testing.T) {
		out, err := c.NomadCLI(ctx, "job", "stop", "-purge", "postgres")
		must.NoError(t, err, must.Sprint(out))
		must.Wait(t, until(2*time.Minute, func() bool {
			holder, err := cluster.PrimaryNode(ctx, capi, volID)
			return err == nil && holder == ""
		}), must.Sprint("the primary lease is still held after the job stopped"))
		// Nomad lets a volume's secrets change (nomad volume register).
		register := func(secret string) {
			t.Helper()
			spec := filepath.Join(t.TempDir(), "register.hcl")
			must.NoError(t, os.WriteFile(spec, []byte(registerSpec(secret)), 0o600))
			out, err := c.NomadCLI(ctx, "volume", "register", spec)
			must.NoError(t, err, must.Sprint(out))
		}
		register("a wrong passphrase for this volume")
		out, err = c.NomadCLI(ctx, "job", "run", "-detach", repoPath(t, "jobs/examples/postgres.nomad.hcl"))
		must.NoError(t, err, must.Sprint(out))
		var refused string
		must.Wait(t, until(3*time.Minute, func() bool {
			allocs, _, err := napi.Jobs().Allocations("postgres", false, (&nomadapi.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return false
			}
			for _, a := range allocs {
				st, _ := c.NomadCLI(ctx, "alloc", "status", a.ID)
				if strings.Contains(st, "secrets.encryption_passphrase is wrong") {
					refused = st
					return true
				}
			}
			return false
		}), must.Sprint("no allocation failed with the wrong-passphrase error"))
		t.Logf("the allocation with the wrong passphrase:\n%s", refused)
		must.StrNotContains(t, refused, "a wrong passphrase for this volume")
		holder, err := cluster.PrimaryNode(ctx, capi, volID)
		must.NoError(t, err)
		must.Eq(t, "", holder, must.Sprint("a stage with the wrong passphrase took the primary lease"))

		out, err = c.NomadCLI(ctx, "job", "stop", "-purge", "postgres")
		must.NoError(t, err, must.Sprint(out))
		register(passphrase)
		out, err = c.NomadCLI(ctx, "job", "run", "-detach", repoPath(t, "jobs/examples/postgres.nomad.hcl"))
		must.NoError(t, err, must.Sprint(out))
		a := waitRunning(t, ctx, c, napi, "postgres", "postgres")
		primary = nodeNamed(t, c, a.NodeName)
		_, err = waitQuery(ctx, primary.IP, 2*time.Minute)
		must.NoError(t, err)
		out, err = psql(ctx, primary.IP, "SELECT count(*) FROM t")
		must.NoError(t, err, must.Sprint(out))
		must.Eq(t, strconv.Itoa(rows), strings.TrimSpace(out))
	})

	step("stopped cleanly, the replicas are identical; volume delete removes them and the records", func(t *testing.T) {
		replicas := replicaNodes(t, ctx, capi)
		out, err := c.NomadCLI(ctx, "job", "stop", "-purge", "postgres")
		must.NoError(t, err, must.Sprint(out))
		// The claims go once the allocation's unpublish has run.
		must.Wait(t, until(2*time.Minute, func() bool {
			holder, err := cluster.PrimaryNode(ctx, capi, volID)
			return err == nil && holder == ""
		}), must.Sprint("the primary lease is still held after the job stopped"))
		var sums []string
		for _, n := range replicas {
			sums = append(sums, fileSum(t, filepath.Join(nodeNamed(t, c, n).DataDir, volID, "data")))
		}
		must.Eq(t, sums[0], sums[1], must.Sprintf("replicas on %v diverge", replicas))

		must.Wait(t, until(2*time.Minute, func() bool {
			out, err = c.NomadCLI(ctx, "volume", "delete", volID)
			return err == nil
		}), must.Sprintf("nomad volume delete: %s", out))
		out, err = c.NomadCLI(ctx, "volume", "status", volID)
		must.Error(t, err, must.Sprint(out))
		for _, nd := range c.Nodes {
			_, err := os.Stat(filepath.Join(nd.DataDir, volID))
			must.True(t, os.IsNotExist(err), must.Sprintf("%s still has the replica: %v", nd.Name, err))
		}
		keys, _, err := capi.KV().Keys("saddlebag/volumes/"+volID, "", nil)
		must.NoError(t, err)
		must.SliceEmpty(t, keys, must.Sprintf("consul still has the volume's records: %v", keys))
		checks, _, err := capi.Health().Checks("saddlebag", nil)
		must.NoError(t, err)
		for _, ch := range checks {
			must.NotEq(t, "saddlebag-volume:"+volID, ch.CheckID)
		}
	})
}
