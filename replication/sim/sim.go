package sim

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/replication/internal/faultproxy"
)

// Config is one schedule.
type Config struct {
	Seed   uint64
	Faults FaultSet // nil: every class
	// Replicas, Size, Writers and Steps default to 3, 16 MiB, 3 and 14.
	Replicas int
	Size     int64
	Writers  int
	Steps    int
	// Timeout is the engines' per-request replica timeout; default
	// replicaTimeout.
	Timeout time.Duration
	// Processes runs each replica as a real process (this test binary,
	// re-executed) on real files, SIGKILLed for a kill; as root each on
	// its own small tmpfs, made full for a disk-full fault. Power loss then
	// degrades to a kill: it needs the in-process crashfs.
	Processes bool
	// Log receives the engines' and replicas' logs; nil discards them.
	Log hclog.Logger

	// beforeCheck, if set, runs after recovery, just before the checks
	// (the checker's own tests damage a replica there).
	beforeCheck func(s *simulation, inSync []*node)
}

// Result is what one schedule found.
type Result struct {
	Seed     uint64
	Schedule []string // the faults injected, in order
	// AckedWritesLost counts blocks that read back a version older than
	// the model allows (or content no write put there), on any in-sync
	// replica after recovery.
	AckedWritesLost int
	// DivergentReplicas counts in-sync replicas whose data differs from
	// the first in-sync replica's after recovery.
	DivergentReplicas int
	// FencedWritesAccepted counts writes a primary acknowledged although
	// they were issued after a later primary had finished promotion.
	FencedWritesAccepted int
	// BlipWriteErrors counts writes and trims that failed because the
	// in-sync record could not be written during a Consul blip (issue
	// #10: a blip must delay I/O, not fail it with EIO).
	BlipWriteErrors int
	// UndetectableLost counts blocks lost in a schedule where a primary
	// was promoted over a rolled-back in-sync record while every replica
	// holding the newest generation was unreachable: no one can tell that
	// record from a current one (replication/history.go, README), so it
	// is counted apart and does not fail the schedule.
	UndetectableLost int
	Undetectable     bool
	// UndetectableFenced counts writes an older primary acknowledged after
	// only primaries promoted over such a record promised: they could
	// reach none of its replicas to fence it. Counted apart, likewise.
	UndetectableFenced int
	// Problems holds one line per failed check (including liveness:
	// recovery that could not promote or bring every replica in sync).
	Problems             []string
	Issued, Acked, Flush int
	Duration             time.Duration
}

// Failed reports whether any check failed.
func (r *Result) Failed() bool { return len(r.Problems) > 0 }

const volume = "simvol"

// replicaTimeout is the engines' per-request timeout (400 ms): short, so faults are
// noticed quickly, but not so short that a busy machine drops replicas
// for no fault at all.
const replicaTimeout = 400 * time.Millisecond

// recoveryWait bounds the wait for every replica to be back in sync. It
// is generous: a healthy schedule is back in well under a second, and the
// bound only decides when a stuck one is called stuck; on a loaded
// machine (many schedules at once) 1 s replica timeouts fire and resyncs
// are retried with back-off, so a tight bound reports load, not bugs.
const recoveryWait = 20 * time.Second

type simulation struct {
	// presetUndetectable, when not 0, is undetectableRollback judged by the
	// scheduler for a promotion running beside it (1: false, 2: true).
	presetUndetectable atomic.Int32
	cfg                Config
	log                hclog.Logger
	ctx                context.Context
	rng                *rand.Rand // the schedule's draws; only the scheduler uses it
	dead               *rand.Rand // power-loss draws

	nodes []*node
	coord coordinator

	events atomic.Uint64
	// flushes are the completed flushes, cuts the events of power cuts
	// (see mustSurvive).
	flushedMu sync.Mutex
	flushes   []flushRec
	cuts      []uint64

	mu        sync.Mutex
	primaries []*primary
	current   *primary
	zombie    *primary
	zombieFor map[int]bool // writers still using the zombie
	powerLost bool

	writers []*writer
	res     *Result
	began   time.Time
}

// pick returns the primary writer w sends its next op to.
func (s *simulation) pick(w int) *primary {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.zombie != nil && s.zombieFor[w] {
		return s.zombie
	}
	return s.current
}

// leaveZombie moves writer w off primary p once p reports being fenced.
func (s *simulation) leaveZombie(w int, p *primary) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.zombie == p {
		delete(s.zombieFor, w)
	}
}

// Run runs one schedule and checks what survived.
func Run(ctx context.Context, cfg Config) (res *Result) {
	setDefault(&cfg.Replicas, 3)
	setDefault(&cfg.Size, 16<<20)
	setDefault(&cfg.Writers, 3)
	setDefault(&cfg.Steps, 14)
	setDefault(&cfg.Timeout, replicaTimeout)
	if cfg.Faults == nil {
		cfg.Faults, _ = ParseFaults("")
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	res = &Result{Seed: cfg.Seed}
	s := &simulation{began: time.Now(), cfg: cfg, log: cfg.Log, ctx: ctx, res: res, zombieFor: map[int]bool{},
		rng: rand.New(rand.NewPCG(cfg.Seed, 1)), dead: rand.New(rand.NewPCG(cfg.Seed, 2))}
	defer func() { res.Duration = time.Since(s.began) }()

	pctx, stopProxies := context.WithCancel(context.Background())
	var proxies sync.WaitGroup
	defer func() {
		s.mu.Lock()
		engines := slices.Clone(s.primaries)
		s.mu.Unlock()
		for _, p := range engines {
			s.crash(p)
		}
		for _, n := range s.nodes {
			s.killNode(n)
			s.cleanupNode(n)
		}
		stopProxies()
		proxies.Wait()
	}()
	for i := range cfg.Replicas {
		px, err := faultproxy.Listen(cfg.Seed*16 + uint64(i))
		if err != nil {
			s.problem("setup: %v", err)
			return res
		}
		proxies.Go(func() { px.Serve(pctx) })
		n, err := s.newNode(i, px)
		if err != nil {
			s.problem("setup: %v", err)
			return res
		}
		s.nodes = append(s.nodes, n)
		if err := s.startNode(n); err != nil {
			s.problem("setup: %v", err)
			return res
		}
	}
	p, err := s.promoteRetry(ctx, 5)
	if err != nil {
		s.problem("setup: first promotion: %v", err)
		return res
	}
	s.current = p

	blocks := cfg.Size / blockSize
	for w := range cfg.Writers {
		lo, hi := blocks*int64(w)/int64(cfg.Writers), blocks*int64(w+1)/int64(cfg.Writers)
		s.writers = append(s.writers, &writer{id: w, lo: lo, hi: hi, hist: make([][]*opRec, hi-lo),
			rng: rand.New(rand.NewPCG(cfg.Seed, 100+uint64(w)))})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, w := range s.writers {
		wg.Go(func() { w.run(s, stop) })
	}
	s.schedule(ctx)
	close(stop)
	wg.Wait()
	for _, w := range s.writers {
		res.Issued += w.issued
		res.Acked += w.acked
		res.Flush += w.flushes
	}
	s.recoverAndCheck(ctx)
	return res
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}
