package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/saddlebag/saddlebag/e2e/cluster"
)

// upgrade is `make dev-upgrade`: build saddlebag from this work tree
// into a new file in the demo's directory, point the running
// saddlebag-node job at it (every other setting kept) and register it,
// as `nomad job run` of a changed job file does, while a client commits
// a row into Postgres every 200 ms; print the longest write stall and
// every failed commit, and check each acknowledged row is there.
func upgrade() error {
	s, err := current()
	if err != nil {
		return err
	}
	if s == nil {
		return errors.New("no demo cluster is up (make dev starts one)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	capi, err := consulapi.NewClient(&consulapi.Config{Address: s.ConsulAddr, Token: cluster.ConsulManagementToken})
	if err != nil {
		return err
	}
	napi, err := nomadapi.NewClient(&nomadapi.Config{Address: "http://" + s.NomadAddr})
	if err != nil {
		return err
	}
	stamp := time.Now().UTC().Format("20060102T150405")
	bin := filepath.Join(s.Dir, "bin", "saddlebag-"+stamp)
	fmt.Printf("building saddlebag (version dev-upgrade-%s) into %s ...\n", stamp, bin)
	build := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X main.version=dev-upgrade-"+stamp, "-o", bin, "./cmd/saddlebag")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build: %w", err)
	}
	job, _, err := napi.Jobs().Info("saddlebag-node", nil)
	if err != nil {
		return fmt.Errorf("read job saddlebag-node: %w", err)
	}
	var old string
	for _, g := range job.TaskGroups {
		for _, t := range g.Tasks {
			if t.Name == "node" {
				old, _ = t.Config["command"].(string)
				t.Config["command"] = bin
			}
		}
	}
	if old == "" {
		return errors.New("job saddlebag-node has no task node with a command")
	}
	primary, err := cluster.PrimaryNode(ctx, capi, "postgres")
	if err != nil || primary == "" {
		return fmt.Errorf("no node holds the postgres volume's primary lease (%v); is the postgres job running?", err)
	}
	nodes, _, err := napi.Nodes().List(nil)
	if err != nil {
		return err
	}
	var ip string
	for _, n := range nodes {
		if n.Name == primary {
			ip = n.Address
		}
	}
	fmt.Printf("Postgres on %s (%s); committing a row every 200ms\n", primary, ip)

	type result struct {
		at  time.Time
		ok  bool
		id  string
		msg string
	}
	var mu sync.Mutex
	var results []result
	lctx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		for lctx.Err() == nil {
			start := time.Now()
			qctx, qcancel := context.WithTimeout(lctx, time.Minute)
			out, err := psql(qctx, ip, "INSERT INTO demo DEFAULT VALUES RETURNING id")
			qcancel()
			if lctx.Err() != nil {
				return
			}
			mu.Lock()
			// psql -At prints the returned id, then the command tag.
			id, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
			results = append(results, result{at: time.Now(), ok: err == nil, id: id, msg: strings.TrimSpace(out)})
			mu.Unlock()
			time.Sleep(max(0, 200*time.Millisecond-time.Since(start)))
		}
	}()
	time.Sleep(2 * time.Second)

	t0 := time.Now()
	fmt.Printf("registering saddlebag-node with %s (was %s) ...\n", bin, old)
	if _, _, err := napi.Jobs().Register(job, nil); err != nil {
		stopLoad()
		<-loadDone
		return fmt.Errorf("register job: %w", err)
	}
	// Every node's allocation replaced and the plugin healthy again.
	for {
		allocs, _, err := napi.Jobs().Allocations("saddlebag-node", false, nil)
		if err == nil {
			fresh := 0
			for _, a := range allocs {
				if a.JobVersion == *job.Version+1 && a.ClientStatus == nomadapi.AllocClientStatusRunning {
					fresh++
				}
			}
			p, _, perr := napi.CSIPlugins().Info(cluster.PluginID, nil)
			if fresh == len(s.Namespaces) && perr == nil && p.NodesHealthy >= len(s.Namespaces) {
				break
			}
		}
		if ctx.Err() != nil {
			stopLoad()
			<-loadDone
			return fmt.Errorf("saddlebag-node not replaced everywhere: %w", ctx.Err())
		}
		time.Sleep(250 * time.Millisecond)
	}
	fmt.Printf("every saddlebag-node allocation replaced after %.1fs; the load goes on 5s more\n", time.Since(t0).Seconds())
	time.Sleep(5 * time.Second)
	stopLoad()
	<-loadDone

	var stall time.Duration
	var failed []result
	var acked []string
	prev := time.Time{}
	for _, r := range results {
		if !r.ok {
			failed = append(failed, r)
			continue
		}
		acked = append(acked, r.id)
		if !prev.IsZero() && r.at.After(t0) {
			stall = max(stall, r.at.Sub(prev))
		}
		prev = r.at
	}
	if len(acked) == 0 {
		return fmt.Errorf("no commit was acknowledged (%d failed)", len(failed))
	}
	out, err := psql(ctx, ip, "SELECT count(*) FROM demo WHERE id IN ("+strings.Join(acked, ",")+")")
	if err != nil {
		return fmt.Errorf("check the rows: %w: %s", err, out)
	}
	fmt.Printf("upgrade_write_stall_seconds %.2f\nupgrade_failed_commits %d\nupgrade_acknowledged_commits %d (present afterwards: %s)\n",
		stall.Seconds(), len(failed), len(acked), lastLine(out))
	for _, f := range failed {
		fmt.Printf("  failed at %s: %s\n", f.at.Format(time.StampMilli), f.msg)
	}
	if len(failed) > 0 || lastLine(out) != fmt.Sprint(len(acked)) {
		return errors.New("the upgrade cost commits")
	}
	return nil
}
