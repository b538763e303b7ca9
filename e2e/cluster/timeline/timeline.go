package timeline

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
)

// Config says what a failover Timeline watches.
type Config struct {
	Nomad  *nomadapi.Client
	Consul *consulapi.Client
	// Volume is the volume ID, Job the job whose allocation claims it.
	Volume, Job string
	// Node is the node killed or cut off, NodeID its Nomad node ID.
	Node, NodeID string
	// Dir is the cluster's directory: the Saddlebag allocations' logs
	// are read from Dir/<node>/nomad/alloc/*/alloc/logs.
	Dir string
}

// Event is one step of a failover, at the moment it was seen.
type Event struct {
	At   time.Time
	What string
}

// Timeline records what happens from a fault (T0) until the workload
// answers again, from every source that says when a step happened:
// Nomad's node status, allocations and their task events, and the
// volume's claims (polled every 50 ms); Consul's view of the node and
// of the primary lock (blocking queries); and the Saddlebag controller
// and node logs (hclog timestamps, read at Stop). Every clock is this
// host's.
type Timeline struct {
	T0  time.Time
	cfg Config

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	events []Event
}

// Watch starts watching; the fault happened at t0.
func Watch(t0 time.Time, cfg Config) *Timeline {
	ctx, cancel := context.WithCancel(context.Background())
	tl := &Timeline{T0: t0, cfg: cfg, cancel: cancel}
	tl.wg.Go(func() { tl.watchNode(ctx) })
	tl.wg.Go(func() { tl.watchClaims(ctx) })
	tl.wg.Go(func() { tl.watchConsulNode(ctx) })
	tl.wg.Go(func() { tl.watchLock(ctx) })
	return tl
}

// Add records a step.
func (tl *Timeline) Add(at time.Time, what string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.events = append(tl.events, Event{At: at, What: what})
}

// Events returns the steps recorded so far, in time order.
func (tl *Timeline) Events() []Event {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	ev := slices.Clone(tl.events)
	slices.SortStableFunc(ev, func(a, b Event) int { return a.At.Compare(b.At) })
	return ev
}

// First returns the first step whose text contains s.
func (tl *Timeline) First(s string) (Event, bool) {
	for _, e := range tl.Events() {
		if strings.Contains(e.What, s) {
			return e, true
		}
	}
	return Event{}, false
}

// Stop ends the watching, then adds the allocations' task events and the
// Saddlebag log lines of the failover.
func (tl *Timeline) Stop(ctx context.Context) {
	tl.cancel()
	tl.wg.Wait()
	tl.addAllocEvents(ctx)
	tl.addLogEvents()
}

// Print writes the timeline, one step a line, each with its time from
// T0 and from the step before, under name (e.g. failover_timeline).
func (tl *Timeline) Print(w io.Writer, name string) {
	prev := tl.T0
	fmt.Fprintf(w, "%s %+7.2fs (%+6.2fs) fault injected\n", name, 0.0, 0.0)
	for _, e := range tl.Events() {
		if e.At.Before(tl.T0) {
			continue
		}
		fmt.Fprintf(w, "%s %+7.2fs (%+6.2fs) %s\n", name, e.At.Sub(tl.T0).Seconds(), e.At.Sub(prev).Seconds(), e.What)
		prev = e.At
	}
}

func (tl *Timeline) poll(ctx context.Context, every time.Duration, f func() bool) {
	for ctx.Err() == nil {
		if f() {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(every):
		}
	}
}

// watchNode records when Nomad marks the node down (or disconnected).
func (tl *Timeline) watchNode(ctx context.Context) {
	last := ""
	tl.poll(ctx, 50*time.Millisecond, func() bool {
		n, _, err := tl.cfg.Nomad.Nodes().Info(tl.cfg.NodeID, (&nomadapi.QueryOptions{}).WithContext(ctx))
		if err != nil || n.Status == last {
			return false
		}
		if last != "" {
			tl.Add(time.Now(), fmt.Sprintf("nomad: %s marked %s", tl.cfg.Node, n.Status))
		}
		last = n.Status
		return n.Status == nomadapi.NodeStatusDown
	})
}

// watchClaims records the job's allocations changing client status and
// the volume's claims changing hands.
func (tl *Timeline) watchClaims(ctx context.Context) {
	status := map[string]string{}
	claims := map[string]bool{}
	first := true
	tl.poll(ctx, 50*time.Millisecond, func() bool {
		q := (&nomadapi.QueryOptions{}).WithContext(ctx)
		if allocs, _, err := tl.cfg.Nomad.Jobs().Allocations(tl.cfg.Job, true, q); err == nil {
			for _, a := range allocs {
				if old, ok := status[a.ID]; ok && old != a.ClientStatus {
					tl.Add(time.Now(), fmt.Sprintf("nomad: alloc %s on %s %s", a.ID[:8], a.NodeName, a.ClientStatus))
				}
				status[a.ID] = a.ClientStatus
			}
		}
		vol, _, err := tl.cfg.Nomad.CSIVolumes().Info(tl.cfg.Volume, q)
		if err != nil {
			return false
		}
		now := map[string]string{}
		for _, a := range vol.Allocations {
			now[a.ID] = a.NodeName
		}
		if !first {
			for id := range claims {
				if _, ok := now[id]; !ok {
					tl.Add(time.Now(), fmt.Sprintf("nomad: old claim released (alloc %s)", id[:8]))
				}
			}
			for id, node := range now {
				if !claims[id] {
					tl.Add(time.Now(), fmt.Sprintf("nomad: new claim granted (alloc %s on %s)", id[:8], node))
				}
			}
		}
		clear(claims)
		for id := range now {
			claims[id] = true
		}
		first = false
		return false
	})
}

// watchConsulNode records when Consul sees the node's agent fail.
func (tl *Timeline) watchConsulNode(ctx context.Context) {
	tl.poll(ctx, 50*time.Millisecond, func() bool {
		checks, _, err := tl.cfg.Consul.Health().Node(tl.cfg.Node, (&consulapi.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return false
		}
		for _, ch := range checks {
			if ch.CheckID == "serfHealth" && ch.Status == consulapi.HealthCritical {
				tl.Add(time.Now(), fmt.Sprintf("consul: %s serfHealth critical (its sessions are invalidated)", tl.cfg.Node))
				return true
			}
		}
		return false
	})
}

// watchLock follows the volume's primary lock with blocking queries:
// freed (the holder's session invalidated, or released), then taken.
func (tl *Timeline) watchLock(ctx context.Context) {
	key := "saddlebag/volumes/" + tl.cfg.Volume + "/primary"
	var index uint64
	session := "?"
	for ctx.Err() == nil {
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: 10 * time.Second}).WithContext(ctx)
		kv, meta, err := tl.cfg.Consul.KV().Get(key, q)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		at := time.Now()
		index = meta.LastIndex
		sid := ""
		var lockIndex uint64
		if kv != nil {
			sid, lockIndex = kv.Session, kv.LockIndex
		}
		if sid == session {
			continue
		}
		switch {
		case session == "?":
		case sid == "":
			tl.Add(at, "consul: primary lock free (holder's session gone; lock-delay runs from here)")
		default:
			node := "?"
			if se, _, err := tl.cfg.Consul.Session().Info(sid, (&consulapi.QueryOptions{}).WithContext(ctx)); err == nil && se != nil {
				node = se.Node
			}
			tl.Add(at, fmt.Sprintf("consul: primary lease taken by %s (lock index %d)", node, lockIndex))
		}
		session = sid
	}
}

// addAllocEvents adds, for every allocation of the job created after T0,
// its placement and its task events.
func (tl *Timeline) addAllocEvents(ctx context.Context) {
	allocs, _, err := tl.cfg.Nomad.Jobs().Allocations(tl.cfg.Job, true, (&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		tl.Add(time.Now(), fmt.Sprintf("(allocations unreadable: %v)", err))
		return
	}
	for _, a := range allocs {
		created := time.Unix(0, a.CreateTime)
		if created.Before(tl.T0) {
			continue
		}
		tl.Add(created, fmt.Sprintf("nomad: replacement alloc %s placed on %s", a.ID[:8], a.NodeName))
		for task, ts := range a.TaskStates {
			for _, ev := range ts.Events {
				msg := ev.DisplayMessage
				if len(msg) > 90 {
					msg = msg[:90]
				}
				tl.Add(time.Unix(0, ev.Time), fmt.Sprintf("nomad: %s task %s: %s: %s", a.ID[:8], task, ev.Type, msg))
			}
		}
	}
}

// logMarks are the Saddlebag log messages that mark failover steps.
var logMarks = []string{
	"node is down",
	"fenced a failed node",
	"fencing node",
	"fencing the volume's unhealthy primary",
	"staging volume",
	"volume key opened",
	"lock held by another session",
	"lease acquired",
	"serving as primary",
	"volume staged",
	"volume published",
	"holding I/O",
	"lease lost",
	"fenced by the controller",
}

// hclogTime is the timestamp layout of hclog's lines.
const hclogTime = "2006-01-02T15:04:05.000Z0700"

// addLogEvents adds the marked lines, logged after T0, of every
// Saddlebag allocation's log on every node: the controllers' lines,
// and the nodes' lines about the volume.
func (tl *Timeline) addLogEvents() {
	files, _ := filepath.Glob(filepath.Join(tl.cfg.Dir, "*", "nomad", "alloc", "*", "alloc", "logs", "*.stderr.0"))
	for _, f := range files {
		node := strings.Split(strings.TrimPrefix(f, tl.cfg.Dir+string(filepath.Separator)), string(filepath.Separator))[0]
		task := strings.TrimSuffix(filepath.Base(f), ".stderr.0")
		if task != "node" && task != "controller" {
			continue
		}
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			ts, rest, ok := strings.Cut(line, " ")
			if !ok {
				continue
			}
			at, err := time.Parse(hclogTime, ts)
			if err != nil || at.Before(tl.T0) {
				continue
			}
			if task == "node" && !strings.Contains(rest, "volume_id="+tl.cfg.Volume) {
				continue
			}
			for _, m := range logMarks {
				if strings.Contains(rest, m) {
					tl.Add(at, fmt.Sprintf("saddlebag %s on %s: %s", task, node, trimLog(rest)))
					break
				}
			}
		}
		fh.Close()
	}
}

// trimLog shortens a log line for the timeline: its level and message
// and the fields that matter, without the repeated ones.
func trimLog(s string) string {
	s = strings.TrimSpace(s)
	for _, drop := range []string{"saddlebag.", "controller=node1 ", "controller=node2 ", "controller=node3 "} {
		s = strings.ReplaceAll(s, drop, "")
	}
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}
