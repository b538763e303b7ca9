package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/internal/ctxutil"
	"github.com/saddlebag/saddlebag/internal/primary"
	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
)

// FailoverLockDelay is the session lock-delay the failover figure is
// measured with: the node agent's default (`saddlebag node --lock-delay`).
const FailoverLockDelay = 5 * time.Second

// failoverTTL is the agents' check TTL; the killed node's session dies by
// serfHealth, so the TTL does not bound the figure.
const failoverTTL = 10 * time.Second

var primaryRE = regexp.MustCompile(`serving as primary`)

// runFailover measures storage failover on a real Consul cluster (a server
// and one client agent per node, each node on its own loopback address):
// node A, a `saddlebag node` process, is primary of a 2-replica volume
// whose replicas live on A and B; node B stands as candidate. Both of A's
// processes (its Consul agent and its saddlebag node, with A's replica)
// are SIGKILLed, and the figure is the time from the kill until B has
// taken the lease, started the engine at the new epoch and completed a
// replicated write and flush.
func runFailover(ctx context.Context, out io.Writer, o Options) error {
	dir := filepath.Join(o.Dir, "failover")
	cl, err := testcluster.StartCluster(ctx, 2, testcluster.Options{Dir: dir})
	if err != nil {
		return fmt.Errorf("failover: consul cluster: %w", err)
	}
	defer cl.Stop()
	nodeA, nodeB := cl.Clients[0], cl.Clients[1]

	// B's replica server and agent run in this process.
	store, err := replication.OpenStore(filepath.Join(dir, "b"), o.Log)
	if err != nil {
		return err
	}
	lnB, err := net.Listen("tcp", net.JoinHostPort(nodeB.IP, "0"))
	if err != nil {
		return err
	}
	bctx, stopB := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopB()
	wg.Go(func() { _ = replication.NewServer(store, o.Log).Serve(bctx, lnB) })

	// A's replica server runs inside its saddlebag node process.
	addrA, err := freeAddr(nodeA.IP)
	if err != nil {
		return err
	}
	addrB := lnB.Addr().String()
	a := exec.Command(o.Binary, "node", "--insecure", "--node", "a", "--data-dir", filepath.Join(dir, "a"), "--listen", addrA,
		"--consul-addr", nodeA.HTTPAddr, "--lock-delay", FailoverLockDelay.String(), "--ttl", failoverTTL.String(),
		"--serve-volume", "failover", "--serve-size", "64MiB", "--serve-replica", addrA, "--serve-replica", addrB)
	stderr, err := a.StderrPipe()
	if err != nil {
		return err
	}
	if err := a.Start(); err != nil {
		return err
	}
	aDone := make(chan struct{})
	defer func() {
		a.Process.Signal(unix.SIGKILL)
		<-aDone
	}()
	ready := make(chan struct{})
	var tail []string
	go func() {
		defer close(aDone)
		s := bufio.NewScanner(stderr)
		signalled := false
		for s.Scan() {
			if !signalled && primaryRE.MatchString(s.Text()) {
				close(ready)
				signalled = true
			}
			if len(tail) < 50 {
				tail = append(tail, s.Text())
			}
		}
		a.Wait()
	}()
	select {
	case <-ready:
	case <-aDone:
		return fmt.Errorf("failover: node a exited before serving:\n%s", strings.Join(tail, "\n"))
	case <-time.After(60 * time.Second):
		return fmt.Errorf("failover: node a not primary within 60s")
	}

	cb, err := leader.NewClient(leader.ConsulConfig{Address: nodeB.HTTPAddr}, o.Log)
	if err != nil {
		return err
	}
	agentB, err := leader.NewAgent(leader.AgentConfig{Client: cb, Node: "b", TTL: failoverTTL, LockDelay: FailoverLockDelay, Log: o.Log})
	if err != nil {
		return err
	}
	wg.Go(func() { _ = agentB.Run(bctx) })
	promoted := make(chan *primary.Primary, 1)
	promoteErr := make(chan error, 1)
	wg.Go(func() {
		p, err := primary.Promote(bctx, primary.Config{Agent: agentB, Client: cb, Volume: "failover", Size: 64 << 20,
			Replicas: []replication.ReplicaConfig{{Addr: addrA}, {Addr: addrB, Local: true}}, Log: o.Log})
		if err != nil {
			promoteErr <- err
			return
		}
		promoted <- p
	})
	// Let B stand (session created, waiting on the lock) before the kill.
	for i := 0; agentB.SessionID() == "" || i < 10; i++ {
		if err := ctxutil.Sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}

	killed := time.Now()
	a.Process.Signal(unix.SIGKILL)
	nodeA.Kill()
	var p *primary.Primary
	select {
	case p = <-promoted:
	case err := <-promoteErr:
		return fmt.Errorf("failover: node b could not take over: %w", err)
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("failover: node b not primary within 2m of the kill")
	}
	buf := make([]byte, 4096)
	if err := p.Engine.WriteAt(ctx, buf, 0, false); err != nil {
		return fmt.Errorf("failover: first write on the new primary: %w", err)
	}
	if err := p.Engine.Flush(ctx); err != nil {
		return fmt.Errorf("failover: first flush on the new primary: %w", err)
	}
	serving := time.Since(killed)
	leaseAt := p.Lease.AcquiredAt().Sub(killed)
	fmt.Fprintf(out, "# failover: primary node's consul agent and saddlebag node SIGKILLed; new primary took the lease after %.2fs (lock-delay %s, check ttl %s), completed a replicated write+flush after %.2fs, serving with %d of 2 replicas in sync\n",
		leaseAt.Seconds(), FailoverLockDelay, failoverTTL, serving.Seconds(), p.Engine.Status().InSync)
	fmt.Fprintf(out, "storage_failover_seconds %.2f\n", serving.Seconds())
	fmt.Fprintf(out, "storage_failover_lock_delay_seconds %.2f\n", FailoverLockDelay.Seconds())
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.Demote(dctx)
}

func freeAddr(ip string) (string, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
