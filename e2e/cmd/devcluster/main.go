package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/saddlebag/saddlebag/e2e/cluster"
)

// marker names the demo's instance among the harness's state files.
var marker = filepath.Join(cluster.StateDir, "dev")

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: devcluster up|status|failover|upgrade|down")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = up()
	case "status":
		err = status()
	case "failover":
		err = failover()
	case "upgrade":
		err = upgrade()
	case "down":
		err = down()
	default:
		err = fmt.Errorf("unknown command %q (want up, status, failover, upgrade or down)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devcluster:", err)
		os.Exit(1)
	}
}

// current returns the running demo's state, nil if there is none.
func current() (*cluster.State, error) {
	b, err := os.ReadFile(marker)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", marker, err)
	}
	s, err := cluster.LoadState(n)
	if errors.Is(err, os.ErrNotExist) {
		_ = os.Remove(marker) // torn down some other way
		return nil, nil
	}
	return s, err
}

func up() error {
	if s, err := current(); err != nil || s != nil {
		if err == nil {
			fmt.Println("the demo cluster is already up (make dev-down removes it)")
			describe(s)
		}
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates network namespaces, a bridge and iptables rules, and mounts")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := cluster.Start(ctx, cluster.Options{
		Detach: true, ConsulUI: true,
		Logf: func(f string, a ...any) { fmt.Printf(f+"\n", a...) },
	})
	if err != nil {
		return err
	}
	if err := os.WriteFile(marker, []byte(strconv.Itoa(c.Instance)+"\n"), 0o644); err != nil {
		_ = c.Destroy(context.Background())
		return err
	}
	fmt.Printf("cluster up in %.0fs\n", time.Since(start).Seconds())
	if err := deploy(ctx, c); err != nil {
		return fmt.Errorf("%w (the cluster is up; make dev-down removes it)", err)
	}
	fmt.Printf("all up in %.0fs\n", time.Since(start).Seconds())
	s, err := cluster.LoadState(c.Instance)
	if err != nil {
		return err
	}
	describe(s)
	return nil
}

func describe(s *cluster.State) {
	host := strings.Split(s.NomadAddr, ":")[0]
	fmt.Printf(`
Saddlebag demo cluster (instance %d): 1 Consul server, 1 Nomad server, 3 nodes,
Saddlebag deployed (jobs saddlebag-keeper, saddlebag-node, saddlebag-controller), a 2-replica
volume "postgres" and the job "postgres" on it.
  Consul UI:  http://%s/ui   (ACLs on, default deny: log in with the
              management token %s)
  Security:   every Saddlebag connection is mutual TLS with Consul Connect
              certificates; intentions by saddlebag setup-intentions; the
              jobs run with tokens of the policies in jobs/acl
  Nomad API:  http://%s   (this Nomad is built from source without its web UI;
                                  use the CLI)
  nodes:      %s
  logs, data: %s

Try:
  export NOMAD_ADDR=http://%s CONSUL_HTTP_ADDR=http://%s CONSUL_HTTP_TOKEN=%s
  alias nomad=$(e2e/tools/build.sh -n nomad) consul=$(e2e/tools/build.sh -n consul)
  nomad plugin status saddlebag
  nomad volume status postgres
  nomad job status postgres
  consul kv get saddlebag/volumes/postgres
  %s/bin/saddlebag status    # every volume: primary, epoch, replicas by node, resync, health
  ip netns exec %s curl -s 'http://127.0.0.1:7420/v1/metrics?format=prometheus' | grep saddlebag_
  PGPASSWORD=saddlebag psql -h <node address of the postgres allocation> -U postgres -c 'SELECT count(*) FROM demo'
  make dev-failover       # SIGKILL the node running Postgres; time it back on the other replica
  make dev-upgrade        # rebuild Saddlebag from this tree and upgrade the running saddlebag-node job
                          # in place under a Postgres insert load (prints upgrade_write_stall_seconds)

Tear down: make dev-down
`, s.Instance, s.ConsulAddr, cluster.ConsulManagementToken, s.NomadAddr, nodeList(s, host), s.Dir, s.NomadAddr, s.ConsulAddr,
		cluster.ConsulManagementToken, s.Dir, firstNamespace(s))
}

func nodeList(s *cluster.State, serverIP string) string {
	var parts []string
	prefix := serverIP[:strings.LastIndexByte(serverIP, '.')+1]
	for i, ns := range s.Namespaces {
		parts = append(parts, fmt.Sprintf("node%d %s%d (netns %s)", i+1, prefix, i+2, ns))
	}
	return strings.Join(parts, ", ")
}

func status() error {
	s, err := current()
	if err != nil {
		return err
	}
	if s == nil {
		fmt.Println("no demo cluster is up (make dev starts one)")
		return nil
	}
	describe(s)
	return nil
}

func down() error {
	s, err := current()
	if err != nil {
		return err
	}
	if s == nil {
		fmt.Println("no demo cluster is up")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.Destroy(ctx); err != nil {
		return fmt.Errorf("teardown incomplete (run make dev-down again): %w", err)
	}
	if err := os.Remove(marker); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	fmt.Printf("demo cluster %d torn down: processes, namespaces, bridge, mounts, cgroups and %s removed\n", s.Instance, s.Dir)
	return nil
}

// firstNamespace is node1's network namespace (where its metrics are
// served on loopback), or a placeholder.
func firstNamespace(s *cluster.State) string {
	if len(s.Namespaces) == 0 {
		return "<node namespace>"
	}
	return s.Namespaces[0]
}
