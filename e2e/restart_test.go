package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/e2e/cluster"
)

// TestRestartsUnderLoad is issue 13: Postgres on a Saddlebag volume
// commits a row every loadInterval from a client outside the cluster
// while Saddlebag itself is restarted under it, one event after another
// on Postgres's node: the saddlebag-node allocation restarted through
// Nomad's API, the `saddlebag node` process (CSI node plugin and data
// plane) SIGKILLed, an upgrade (`nomad job run` of the node job with a
// new binary), and a restart of the Nomad client agent. For each it
// prints the longest write stall (<event>_write_stall_seconds: the
// longest time between two acknowledged commits around the event), the
// inserts that failed, and whether Postgres's task was restarted or
// moved; at the end, every row whose commit was acknowledged is checked
// to be there. Each event is judged on its own (t.Errorf), so that one
// run measures all of them.
func TestRestartsUnderLoad(t *testing.T) {
	c := cluster.New(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 14*time.Minute)
	defer cancel()
	napi, err := c.Nomad()
	must.NoError(t, err)
	root, err := filepath.Abs("..")
	must.NoError(t, err)
	t.Cleanup(func() { _, _ = c.NomadCLI(context.Background(), "job", "stop", "-purge", "postgres") })

	bin, err := c.BuildSaddlebag(ctx, root)
	must.NoError(t, err)
	must.NoError(t, c.DeploySaddlebag(ctx, root, bin))
	out, err := c.NomadCLI(ctx, "volume", "create", filepath.Join("testdata", "volume-postgres.hcl"))
	must.NoError(t, err, must.Sprint(out))
	out, err = c.NomadCLI(ctx, "job", "run", "-detach", repoPath(t, "jobs/examples/postgres.nomad.hcl"))
	must.NoError(t, err, must.Sprint(out))
	pg := waitRunning(t, ctx, c, napi, "postgres", "postgres")
	node := nodeNamed(t, c, pg.NodeName)
	out, err = psql(ctx, node.IP, "CREATE TABLE load (id int PRIMARY KEY, at timestamptz DEFAULT now())")
	must.NoError(t, err, must.Sprint(out))

	ld := startLoad(ctx, func() string { return postgresIP(ctx, c, napi) })
	defer ld.stop()
	time.Sleep(5 * time.Second) // a steady state to compare with
	fmt.Printf("load_baseline_max_gap_seconds %.2f\n", ld.maxGap(time.Time{}, time.Now()).Seconds())

	event := func(t *testing.T, name string, do func(nd *cluster.Node) error) {
		restartEvent(ctx, t, c, napi, ld, name, do)
	}

	t.Run("alloc restart", func(t *testing.T) {
		event(t, "alloc_restart", func(nd *cluster.Node) error { return restartNodeAlloc(ctx, napi, nd) })
	})
	t.Run("plugin SIGKILL", func(t *testing.T) {
		event(t, "plugin_sigkill", killNodePlugin)
	})
	t.Run("upgrade", func(t *testing.T) {
		// A new binary (another version string) at another path: the job
		// changes, and Nomad replaces every allocation.
		bin2 := filepath.Join(c.Dir, "bin", "saddlebag-next")
		cmd := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X main.version=e2e-upgrade", "-o", bin2, "./cmd/saddlebag")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
		out, err := cmd.CombinedOutput()
		must.NoError(t, err, must.Sprint(string(out)))
		var oldAlloc string
		event(t, "upgrade", func(nd *cluster.Node) error {
			a, err := nodeAllocOn(ctx, napi, nd.Name)
			if err != nil {
				return err
			}
			oldAlloc = a.ID
			out, err := c.NomadCLI(ctx, append(append([]string{"job", "run", "-detach"}, c.NodeJobVars(bin2)...),
				filepath.Join(root, "jobs", "saddlebag-node.nomad.hcl"))...)
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			// Wait for the new allocation to run on this node.
			deadline := time.Now().Add(3 * time.Minute)
			for time.Now().Before(deadline) {
				if b, err := nodeAllocOn(ctx, napi, nd.Name); err == nil && b.ID != oldAlloc {
					return nil
				}
				time.Sleep(200 * time.Millisecond)
			}
			return fmt.Errorf("no new saddlebag-node allocation on %s", nd.Name)
		})
		// Does Nomad stop the old allocation before it starts the new one?
		if oldAlloc != "" {
			pgNode := postgresAlloc(ctx, napi)
			if pgNode != nil {
				nb, err := nodeAllocOn(ctx, napi, pgNode.NodeName)
				if err == nil {
					oldEnd := taskEvent(ctx, napi, oldAlloc, "Killed")
					newStart := taskEvent(ctx, napi, nb.ID, "Started")
					fmt.Printf("upgrade_old_alloc_killed %s\nupgrade_new_alloc_started %s\nupgrade_stop_before_start %v\n",
						oldEnd.Format(time.StampMilli), newStart.Format(time.StampMilli), !oldEnd.IsZero() && oldEnd.Before(newStart))
				}
			}
		}
	})
	t.Run("nomad client restart", func(t *testing.T) {
		event(t, "nomad_client_restart", func(nd *cluster.Node) error {
			_, err := nd.RestartNomad(ctx)
			return err
		})
	})

	ld.stop()
	checkAcked(ctx, t, postgresIP(ctx, c, napi), ld, "load")
}

// checkAcked checks, once ld has stopped, that every row whose commit ld
// saw acknowledged is in Postgres at ip, and prints
// <name>_acknowledged_commits and <name>_lost_commits.
func checkAcked(ctx context.Context, t *testing.T, ip string, ld *load, name string) {
	t.Helper()
	acked := ld.acked()
	out, err := psql(ctx, ip, "SELECT id FROM load ORDER BY id")
	must.NoError(t, err, must.Sprint(out))
	have := map[int]bool{}
	for _, l := range strings.Fields(out) {
		n, err := strconv.Atoi(l)
		must.NoError(t, err)
		have[n] = true
	}
	var lost []int
	for _, id := range acked {
		if !have[id] {
			lost = append(lost, id)
		}
	}
	fmt.Printf("%s_acknowledged_commits %d\n%s_lost_commits %d\n", name, len(acked), name, len(lost))
	must.SliceEmpty(t, lost, must.Sprintf("acknowledged commits missing: %v", lost))
}

// restartEvent runs do (a restart, crash or upgrade of Saddlebag) on
// Postgres's node while ld commits, then waits for the plugin to be
// healthy and the load to settle, and judges the window from just before
// it (t.Errorf, so that one run measures every event): it prints
// <name>_write_stall_seconds (the longest time between two acknowledged
// commits), <name>_failed_inserts, <name>_postgres_task_restarts and
// <name>_postgres_moved, and any of those but the stall fails it, as
// does Postgres logging a PANIC or an I/O error. TestRestartsUnderLoad
// (raw_exec) and TestDockerForms (docker) use it.
func restartEvent(ctx context.Context, t *testing.T, c *cluster.Cluster, napi *nomadapi.Client, ld *load, name string, do func(nd *cluster.Node) error) {
	t.Helper()
	pgBefore := postgresAlloc(ctx, napi)
	if pgBefore == nil {
		t.Errorf("%s: no running postgres allocation before the event", name)
		return
	}
	nd := nodeNamed(t, c, pgBefore.NodeName)
	restartsBefore := taskRestarts(ctx, napi, pgBefore.ID)
	t0 := time.Now()
	if err := do(nd); err != nil {
		t.Errorf("%s: %v", name, err)
	}
	// Settle: the plugin healthy again, and acknowledged commits
	// flowing for a while.
	if err := c.WaitPlugin(ctx, cluster.ControllerCount, len(c.Nodes)); err != nil {
		t.Errorf("%s: %v", name, err)
	}
	healthy := time.Since(t0)
	if !ld.waitAcks(ctx, 20, 3*time.Minute) {
		t.Errorf("%s: commits did not resume within 3 minutes", name)
	}
	t1 := time.Now()
	t.Logf("%s: plugin healthy again %.1fs after the event, 20 more commits after %.1fs", name, healthy.Seconds(), t1.Sub(t0).Seconds())
	stall := ld.maxGap(t0, t1)
	failed := ld.failures(t0, t1)
	pgAfter := postgresAlloc(ctx, napi)
	moved := pgAfter == nil || pgAfter.ID != pgBefore.ID
	restarts := 0
	if !moved {
		restarts = taskRestarts(ctx, napi, pgAfter.ID) - restartsBefore
	}
	fmt.Printf("%s_write_stall_seconds %.2f\n%s_failed_inserts %d\n%s_postgres_task_restarts %d\n%s_postgres_moved %v\n",
		name, stall.Seconds(), name, len(failed), name, restarts, name, moved)
	for i, f := range failed {
		if i == 3 {
			break
		}
		fmt.Printf("%s_failed_insert %s\n", name, f)
	}
	if len(failed) > 0 || restarts > 0 || moved {
		t.Errorf("%s: %d failed inserts, postgres task restarted %d times, moved %v", name, len(failed), restarts, moved)
	}
	if logs, err := c.NomadCLI(ctx, "alloc", "logs", "-stderr", pgBefore.ID, "postgres"); err == nil {
		for _, bad := range []string{"PANIC", "Input/output error"} {
			if strings.Contains(logs, bad) {
				t.Errorf("%s: postgres logged %q:\n%s", name, bad, lineWith(logs, bad))
			}
		}
	}
}

// restartNodeAlloc restarts the saddlebag-node allocation on nd through
// Nomad's API (Nomad stops the task, SIGTERM then SIGKILL after its
// kill_timeout, and starts it again in the same allocation).
func restartNodeAlloc(ctx context.Context, napi *nomadapi.Client, nd *cluster.Node) error {
	a, err := nodeAllocOn(ctx, napi, nd.Name)
	if err != nil {
		return err
	}
	return napi.Allocations().Restart(&nomadapi.Allocation{ID: a.ID, NodeID: a.NodeID}, "", nil)
}

// killNodePlugin SIGKILLs nd's `saddlebag node` process (raw_exec: the
// task itself; docker: the container's init, so the container exits).
func killNodePlugin(nd *cluster.Node) error {
	pid, err := saddlebagPID(nd, "node")
	if err != nil {
		return err
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

// loadInterval is how often the load commits a row.
const loadInterval = 200 * time.Millisecond

// load inserts one row per loadInterval, each in its own psql (its own
// connection and transaction), and records each attempt.
type load struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	attempts []attempt
	acks     int
}

type attempt struct {
	id         int
	start, end time.Time
	ok         bool
	out        string
}

func startLoad(ctx context.Context, ip func() string) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for id := 1; ctx.Err() == nil; id++ {
			start := time.Now()
			qctx, qcancel := context.WithTimeout(ctx, time.Minute)
			out, err := psql(qctx, ip(), fmt.Sprintf("INSERT INTO load (id) VALUES (%d)", id))
			qcancel()
			if ctx.Err() != nil {
				return
			}
			a := attempt{id: id, start: start, end: time.Now(), ok: err == nil, out: strings.TrimSpace(out)}
			l.mu.Lock()
			l.attempts = append(l.attempts, a)
			if a.ok {
				l.acks++
			}
			l.mu.Unlock()
			if d := loadInterval - time.Since(start); d > 0 {
				time.Sleep(d)
			}
		}
	}()
	return l
}

func (l *load) stop() { l.cancel(); <-l.done }

// waitAcks waits for n more acknowledged commits.
func (l *load) waitAcks(ctx context.Context, n int, timeout time.Duration) bool {
	l.mu.Lock()
	want := l.acks + n
	l.mu.Unlock()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		l.mu.Lock()
		got := l.acks
		l.mu.Unlock()
		if got >= want {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// maxGap is the longest time between two consecutive acknowledgements
// that ends after from and starts before to (so a stall that began just
// before from counts whole).
func (l *load) maxGap(from, to time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var prev time.Time
	var gap time.Duration
	for _, a := range l.attempts {
		if !a.ok {
			continue
		}
		if !prev.IsZero() && a.end.After(from) && prev.Before(to) {
			gap = max(gap, a.end.Sub(prev))
		}
		prev = a.end
	}
	return gap
}

func (l *load) failures(from, to time.Time) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, a := range l.attempts {
		if !a.ok && a.end.After(from) && a.start.Before(to) {
			out = append(out, fmt.Sprintf("id=%d after %.2fs: %s", a.id, a.end.Sub(from).Seconds(), tail(a.out, 1)))
		}
	}
	return out
}

func (l *load) acked() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ids []int
	for _, a := range l.attempts {
		if a.ok {
			ids = append(ids, a.id)
		}
	}
	return ids
}

// postgresAlloc is the running postgres allocation (nil if none).
func postgresAlloc(ctx context.Context, napi *nomadapi.Client) *nomadapi.AllocationListStub {
	allocs, _, err := napi.Jobs().Allocations("postgres", false, (&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil
	}
	for _, a := range allocs {
		if a.ClientStatus == nomadapi.AllocClientStatusRunning && a.DesiredStatus == nomadapi.AllocDesiredStatusRun {
			return a
		}
	}
	return nil
}

// postgresIP is the address of the node running Postgres now (the last
// known one while none runs).
func postgresIP(ctx context.Context, c *cluster.Cluster, napi *nomadapi.Client) string {
	if a := postgresAlloc(ctx, napi); a != nil {
		for _, nd := range c.Nodes {
			if nd.Name == a.NodeName {
				lastPostgresIP.Store(nd.IP)
				return nd.IP
			}
		}
	}
	if ip, ok := lastPostgresIP.Load().(string); ok {
		return ip
	}
	return c.Nodes[0].IP
}

var lastPostgresIP atomic.Value

func taskRestarts(ctx context.Context, napi *nomadapi.Client, allocID string) int {
	a, _, err := napi.Allocations().Info(allocID, (&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return 0
	}
	n := 0
	for _, ts := range a.TaskStates {
		n += int(ts.Restarts)
	}
	return n
}

// taskEvent is when allocID's task first had an event of type typ.
func taskEvent(ctx context.Context, napi *nomadapi.Client, allocID, typ string) time.Time {
	a, _, err := napi.Allocations().Info(allocID, (&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return time.Time{}
	}
	for _, ts := range a.TaskStates {
		for _, ev := range ts.Events {
			if ev.Type == typ {
				return time.Unix(0, ev.Time)
			}
		}
	}
	return time.Time{}
}

// nodeAllocOn is the running saddlebag-node allocation on node.
func nodeAllocOn(ctx context.Context, napi *nomadapi.Client, node string) (*nomadapi.AllocationListStub, error) {
	return jobAllocOn(ctx, napi, "saddlebag-node", node)
}

// jobAllocOn is the running allocation of job on node.
func jobAllocOn(ctx context.Context, napi *nomadapi.Client, job, node string) (*nomadapi.AllocationListStub, error) {
	allocs, _, err := napi.Jobs().Allocations(job, false, (&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	for _, a := range allocs {
		if a.NodeName == node && a.ClientStatus == nomadapi.AllocClientStatusRunning && a.DesiredStatus == nomadapi.AllocDesiredStatusRun {
			return a, nil
		}
	}
	return nil, fmt.Errorf("no running %s allocation on %s", job, node)
}

// saddlebagPID finds the `saddlebag <sub>` process of node nd.
func saddlebagPID(nd *cluster.Node, sub string) (int, error) {
	pids, err := nd.PIDs()
	if err != nil {
		return 0, err
	}
	var found []int
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) > 1 && strings.HasPrefix(filepath.Base(args[0]), "saddlebag") && args[1] == sub {
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		slices.Sort(found)
		return 0, fmt.Errorf("want one saddlebag %s process on %s, found %v", sub, nd.Name, found)
	}
	return found[0], nil
}
