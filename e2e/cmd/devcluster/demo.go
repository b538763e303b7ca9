package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/saddlebag/saddlebag/e2e/cluster"
	"github.com/saddlebag/saddlebag/e2e/cluster/timeline"
)

// The demo's volume spec: the example's, at 512 MiB (the end-to-end
// tests' copy) so that the demo fits any machine's disk.
const volumeSpec = "e2e/testdata/volume-postgres.hcl"

// deploy puts Saddlebag, the volume and Postgres on the cluster, as an
// operator would with the nomad CLI, and commits a few rows.
func deploy(ctx context.Context, c *cluster.Cluster) error {
	root, err := os.Getwd() // scripts/dev.sh runs this from the repository
	if err != nil {
		return err
	}
	step := func(what string) func() {
		t := time.Now()
		fmt.Printf("%s ...\n", what)
		return func() { fmt.Printf("%s: done in %.1fs\n", what, time.Since(t).Seconds()) }
	}
	done := step("building saddlebag into the cluster's directory")
	bin, err := c.BuildSaddlebag(ctx, root)
	if err != nil {
		return err
	}
	done()
	done = step("nomad job run jobs/saddlebag-keeper.nomad.hcl, jobs/saddlebag-node.nomad.hcl, jobs/saddlebag-controller.nomad.hcl; waiting for the plugin")
	if err := c.DeploySaddlebag(ctx, root, bin); err != nil {
		return err
	}
	done()
	done = step("nomad volume create " + volumeSpec)
	if out, err := c.NomadCLI(ctx, "volume", "create", filepath.Join(root, volumeSpec)); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	done()
	done = step("nomad job run jobs/examples/postgres.nomad.hcl; waiting for Postgres")
	if out, err := c.NomadCLI(ctx, "job", "run", "-detach", filepath.Join(root, "jobs/examples/postgres.nomad.hcl")); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	capi, err := c.ConsulClient()
	if err != nil {
		return err
	}
	ip, err := waitPostgresService(ctx, capi)
	if err != nil {
		return err
	}
	done()
	out, err := psql(ctx, ip, "CREATE TABLE IF NOT EXISTS demo (id serial PRIMARY KEY, at timestamptz DEFAULT now()); INSERT INTO demo SELECT FROM generate_series(1, 100); SELECT count(*) FROM demo;")
	if err != nil {
		return fmt.Errorf("psql: %w: %s", err, out)
	}
	fmt.Printf("Postgres on %s: table demo has %s rows\n", ip, lastLine(out))
	return nil
}

// waitPostgresService waits until Consul has a passing postgres service
// instance and returns its address.
func waitPostgresService(ctx context.Context, capi *consulapi.Client) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		entries, _, err := capi.Health().Service("postgres", "", true, (&consulapi.QueryOptions{}).WithContext(ctx))
		if err == nil && len(entries) > 0 {
			return entries[0].Service.Address, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("postgres not up: %w", ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func psql(ctx context.Context, ip, sql string) (string, error) {
	cmd := exec.CommandContext(ctx, "psql", "-X", "-v", "ON_ERROR_STOP=1", "-At",
		"host="+ip+" port=5432 user=postgres dbname=postgres connect_timeout=2", "-c", sql)
	cmd.Env = append(os.Environ(), "PGPASSWORD=saddlebag")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func lastLine(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return ls[len(ls)-1]
}

// failover kills every process of the node under Postgres and times
// Postgres answering again on the node with the other replica, next to
// the time Nomad takes to mark the node down.
func failover() error {
	s, err := current()
	if err != nil {
		return err
	}
	if s == nil {
		return errors.New("no demo cluster is up (make dev starts one)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	capi, err := consulapi.NewClient(&consulapi.Config{Address: s.ConsulAddr, Token: cluster.ConsulManagementToken})
	if err != nil {
		return err
	}
	napi, err := nomadapi.NewClient(&nomadapi.Config{Address: "http://" + s.NomadAddr})
	if err != nil {
		return err
	}
	primary, err := cluster.PrimaryNode(ctx, capi, "postgres")
	if err != nil || primary == "" {
		return fmt.Errorf("no node holds the postgres volume's primary lease (%v); is the postgres job running?", err)
	}
	kv, _, err := capi.KV().Get("saddlebag/volumes/postgres", nil)
	if err != nil || kv == nil {
		return fmt.Errorf("no volume record: %v", err)
	}
	var rec struct {
		Replicas []struct {
			Node string `json:"node"`
		} `json:"replicas"`
	}
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return err
	}
	var other string
	for _, r := range rec.Replicas {
		if r.Node != primary {
			other = r.Node
		}
	}
	nodes, _, err := napi.Nodes().List(nil)
	if err != nil {
		return err
	}
	ips := map[string]string{}
	var primaryID string
	for _, n := range nodes {
		ips[n.Name] = n.Address
		if n.Name == primary {
			primaryID = n.ID
		}
	}
	if other == "" || ips[other] == "" || primaryID == "" {
		return fmt.Errorf("no other live replica node than %s (%+v); make dev-down && make dev starts afresh", primary, rec.Replicas)
	}
	if n, _, err := napi.Nodes().Info(primaryID, nil); err == nil && n.Status != nomadapi.NodeStatusReady {
		return fmt.Errorf("%s is %s already; make dev-down && make dev starts afresh", primary, n.Status)
	}
	out, err := psql(ctx, ips[primary], "INSERT INTO demo DEFAULT VALUES; SELECT count(*) FROM demo;")
	if err != nil {
		return fmt.Errorf("psql on %s: %w: %s", primary, err, out)
	}
	before := lastLine(out)
	fmt.Printf("Postgres on %s (%s), primary of volume postgres, %s rows committed; the other replica is on %s (%s)\n",
		primary, ips[primary], before, other, ips[other])
	fmt.Printf("SIGKILL every process of %s (Consul agent, Nomad client, Saddlebag, Postgres) ...\n", primary)
	t0, err := s.KillNode(primary)
	if err != nil {
		return err
	}
	tl := timeline.Watch(t0, timeline.Config{Nomad: napi, Consul: capi, Volume: "postgres", Job: "postgres",
		Node: primary, NodeID: primaryID, Dir: s.Dir})
	downCh := make(chan time.Duration, 1)
	go func() {
		for ctx.Err() == nil {
			if n, _, err := napi.Nodes().Info(primaryID, nil); err == nil && n.Status == nomadapi.NodeStatusDown {
				d := time.Since(t0)
				fmt.Printf("  %5.1fs Nomad marks %s down\n", d.Seconds(), primary)
				downCh <- d
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		downCh <- 0
	}()
	for {
		if ctx.Err() != nil {
			return fmt.Errorf("postgres did not come back on %s: %w", other, ctx.Err())
		}
		qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
		out, err = psql(qctx, ips[other], "SELECT count(*) FROM demo")
		qcancel()
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	readyAt := time.Now()
	ready := readyAt.Sub(t0)
	down := <-downCh
	fmt.Printf("  %5.1fs Postgres answers on %s with %s rows (%s committed before the kill)\n\n", ready.Seconds(), other, lastLine(out), before)
	tl.Add(readyAt, "first query answered on "+other)
	tl.Stop(ctx)
	fmt.Println("Every step, with its time from the kill and from the step before:")
	tl.Print(os.Stdout, "failover_timeline")
	fmt.Printf("\nfailover_seconds %.2f\nnomad_node_down_seconds %.2f\n", ready.Seconds(), down.Seconds())
	if e, ok := tl.First("primary lock free"); ok {
		fmt.Printf("consul_session_invalidated_seconds %.2f\n", e.At.Sub(t0).Seconds())
	}
	if e, ok := tl.First("old claim released"); ok {
		fmt.Printf("nomad_old_claim_released_seconds %.2f\n", e.At.Sub(t0).Seconds())
	}
	fmt.Println()
	if before != lastLine(out) {
		return fmt.Errorf("postgres on %s has %s rows, %s were committed before the kill", other, lastLine(out), before)
	}
	fmt.Printf("%s stays dead (its replica is missing: nomad volume status postgres, consul checks show the volume degraded).\n", primary)
	fmt.Println("make dev-down tears everything down; make dev starts afresh.")
	return nil
}
