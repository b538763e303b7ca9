package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/replication"
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
	// degrades to a kill: it needs the in-process CrashFS.
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

// primary is one engine the simulation started.
type primary struct {
	eng      *replication.Engine
	epoch    uint64
	inc      int    // promotion order
	began    uint64 // event counter when its promotion began
	promised uint64 // event counter when StartEngine returned
	dead     *atomic.Bool
	session  uint64 // its lock session in the coordinator
	// abandoned: its engine panicked and may hold its locks; never closed.
	abandoned bool
	// overRollback: promoted over a rolled-back in-sync record with every
	// holder of the newest generation unreachable; it could promise (and
	// so fence) none of the replicas the primaries before it wrote to.
	overRollback bool
}

// crash stops p as a process crash would: from this instant it records
// nothing (a dead process writes no in-sync record, even though closing
// the in-process engine fails its in-flight writes and drops replicas),
// then its connections close, then its lock is free (session expiry).
func (s *simulation) crash(p *primary) {
	s.mu.Lock()
	abandoned := p.abandoned
	s.mu.Unlock()
	if abandoned {
		return
	}
	p.dead.Store(true)
	p.eng.Close()
	s.coord.release(p.session)
}

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

func (s *simulation) note(format string, args ...any) {
	line := fmt.Sprintf("%6.3fs ", time.Since(s.began).Seconds()) + fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.res.Schedule = append(s.res.Schedule, line)
	s.mu.Unlock()
	s.log.Info("sim: " + line)
}

func (s *simulation) problem(format string, args ...any) {
	s.mu.Lock()
	s.res.Problems = append(s.res.Problems, fmt.Sprintf(format, args...))
	s.mu.Unlock()
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

// flushRec is a completed flush: the event it was issued at, the count
// of unflushed-write losses found then, and the primary it went through.
type flushRec struct {
	issued, losses, epoch uint64
	at                    time.Duration // when it completed, since the schedule began
}

func (s *simulation) flushed(f flushRec) {
	s.flushedMu.Lock()
	defer s.flushedMu.Unlock()
	s.flushes = append(s.flushes, f)
}

// powerCut records that a replica lost power now.
func (s *simulation) powerCut() {
	at := s.events.Add(1)
	s.flushedMu.Lock()
	defer s.flushedMu.Unlock()
	s.cuts = append(s.cuts, at)
}

// unflushedLosses counts the times any primary found its last in-sync
// replica back from a power loss with unflushed writes gone.
func (s *simulation) unflushedLosses() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, p := range s.primaries {
		n += p.eng.UnflushedLosses()
	}
	return n
}

// mustSurvive reports whether an acknowledged op must read back. Without
// a power loss, every one. After one: a FUA write, or an op a completed
// flush covers: one issued after its acknowledgement
//   - with no loss of unflushed writes found in between: one found was
//     reported (ErrUnflushedLost) to the flushes in flight and to the
//     next one, as Linux reports a writeback error once; the flushes
//     after that succeed without making the lost writes durable;
//   - through the primary that acknowledged it, or with no power cut
//     between the op's issue and the flush: a new primary makes durable
//     what the replicas it found hold; if the only replicas that held a
//     write lost power before it was flushed, no one can know it existed.
//     The op's issue, not its acknowledgement, bounds the window: a
//     replica may apply it (and reply) any time after its issue, and a
//     cut right after that reply may be counted before the writer counts
//     the acknowledgement (seed 510350150).
func (s *simulation) mustSurvive(op *opRec) bool {
	ok, _ := s.survival(op)
	return ok
}

// survival is mustSurvive with the reason, for a report.
func (s *simulation) survival(op *opRec) (bool, string) {
	s.mu.Lock()
	powerLost := s.powerLost
	s.mu.Unlock()
	if !powerLost {
		return true, " (no power was lost)"
	}
	if op.fua {
		return true, " (FUA)"
	}
	s.flushedMu.Lock()
	defer s.flushedMu.Unlock()
	for _, f := range s.flushes {
		if f.issued <= op.ackAt || f.losses != op.losses {
			continue
		}
		if f.epoch == op.epoch || !slices.ContainsFunc(s.cuts, func(c uint64) bool { return c > op.issued && c < f.issued }) {
			return true, fmt.Sprintf(" (a flush at epoch %d completed at %.3fs, issued at event %d after its ack at event %d)",
				f.epoch, f.at.Seconds(), f.issued, op.ackAt)
		}
	}
	return false, ""
}

// survivalWhy is survival's reason alone.
func (s *simulation) survivalWhy(op *opRec) string {
	_, why := s.survival(op)
	return why
}

// blipFailed counts an op that failed only because the in-sync record
// was unwritable for a moment.
func (s *simulation) blipFailed(p *primary, op *opRec, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.res.BlipWriteErrors++
	if s.res.BlipWriteErrors == 1 {
		s.res.Problems = append(s.res.Problems, fmt.Sprintf("consul blip: primary of epoch %d failed op %d: %v", p.epoch, op.seq, err))
	}
}

// checkFenced counts an acknowledgement by p of an op issued after a
// later primary finished its promotion: the later primary's promise must
// have fenced p by then.
func (s *simulation) checkFenced(p *primary, op *opRec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var by *primary // the first later primary that should have fenced p
	excused := true
	for _, q := range s.primaries {
		if q.inc > p.inc && q.promised < op.issued {
			if by == nil {
				by = q
			}
			excused = excused && q.overRollback
		}
	}
	switch {
	case by == nil:
	case excused:
		s.res.UndetectableFenced++
		if s.res.UndetectableFenced == 1 {
			s.res.Schedule = append(s.res.Schedule, fmt.Sprintf(
				"the primary of epoch %d acknowledged op %d after the primary of epoch %d, promoted over the rolled-back record, promised (undetectable by design)",
				p.epoch, op.seq, by.epoch))
		}
	default:
		s.res.FencedWritesAccepted++
		if s.res.FencedWritesAccepted <= 3 {
			s.res.Problems = append(s.res.Problems, fmt.Sprintf(
				"fenced primary (epoch %d) acknowledged op %d issued after the primary of epoch %d promised",
				p.epoch, op.seq, by.epoch))
		}
	}
}

// panicSite names the data-plane function a recovered panic came from.
func panicSite() string {
	var frames []string
	for _, line := range strings.Split(string(debug.Stack()), "\n") {
		if strings.Contains(line, "saddlebag/replication.") && !strings.Contains(line, "/sim.") && len(frames) < 3 {
			f := strings.TrimPrefix(strings.TrimSpace(line), "github.com/saddlebag/saddlebag/replication.")
			if i := strings.LastIndex(f, "("); i > 0 {
				f = f[:i]
			}
			frames = append(frames, f)
		}
	}
	if len(frames) == 0 {
		return "?"
	}
	return strings.Join(frames, " < ")
}

// engineBroken reports that p's engine panicked or hung, and abandons it:
// the schedule goes on with a new primary.
func (s *simulation) engineBroken(p *primary, what string) {
	p.dead.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current == p {
		s.current = nil
	}
	if s.zombie == p {
		s.zombie = nil
	}
	if p.abandoned {
		return
	}
	p.abandoned = true
	s.res.Problems = append(s.res.Problems, fmt.Sprintf("engine of epoch %d %s", p.epoch, what))
	s.coord.release(p.session)
}

// promote makes a new primary the way internal/primary.Promote does: take
// the lock (its index is the epoch), read the in-sync record, start the
// engine over every replica with the recorded set as in sync, and hand it
// the record-writing hook. An empty record is refused (leader's
// InSyncReplicas); no record means a new volume (every replica usable).
// Keep promotion in this one function: the product's is changing.
func (s *simulation) promote(ctx context.Context) (*primary, error) {
	epoch, session := s.coord.acquire()
	dead := new(atomic.Bool)
	var recorded *replication.Membership
	if rec, ok := s.coord.read(); ok {
		recorded = &replication.Membership{Gen: rec.Gen, Replicas: rec.Replicas}
	}
	cfg := replication.EngineConfig{
		Volume: volume, Size: s.cfg.Size, Epoch: epoch, Recorded: recorded,
		Timeout: s.cfg.Timeout, ReconnectInterval: 20 * time.Millisecond,
		ProgressInterval: time.Hour, ActivityExtents: 2,
		Hook: hook{c: &s.coord, epoch: epoch, session: session, dead: dead}, Log: s.log,
	}
	for _, n := range s.nodes {
		cfg.Replicas = append(cfg.Replicas, replication.ReplicaConfig{Addr: n.addr()})
	}
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	began := s.events.Add(1)
	// The newest set written before it starts (StartEngine may record
	// its own, which must not count as a holder).
	newest := s.coord.newestRecord()
	var undetectable bool
	switch s.presetUndetectable.Load() {
	case 0:
		undetectable = s.undetectableRollback()
	case 2:
		undetectable = true
	}
	eng, err := replication.StartEngine(sctx, cfg)
	var stale *replication.StaleEpochError
	if errors.As(err, &stale) {
		// As internal/primary.Promote: holding the lock, start above the
		// replicas' promise (the lock index was reset).
		if e, ok := s.coord.raiseEpoch(session, stale.Promised); ok {
			epoch, cfg.Epoch = e, e
			cfg.Hook = hook{c: &s.coord, epoch: epoch, session: session, dead: dead}
			eng, err = replication.StartEngine(sctx, cfg)
		}
	}
	if err != nil {
		s.coord.release(session)
		return nil, fmt.Errorf("epoch %d: %w", epoch, err)
	}
	if !undetectable && s.promotedWithoutHolders(recorded, newest, eng) {
		undetectable = true
	}
	if undetectable {
		s.markUndetectable()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := &primary{eng: eng, epoch: epoch, inc: len(s.primaries) + 1, began: began, promised: s.events.Add(1), dead: dead, session: session,
		overRollback: undetectable}
	s.primaries = append(s.primaries, p)
	return p, nil
}

// soleHolder reports whether n is the only replica left that holds the
// newest generation a primary recorded: the only member of that set not
// wiped since it was recorded.
func (s *simulation) soleHolder(n *node) bool {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	if cur != nil {
		// The running primary knows better than the record, which may lag
		// (a blip): its in-sync replicas hold the newest generation.
		holders := 0
		mine := false
		for _, r := range cur.eng.Status().Replicas {
			if r.State != replication.StateInSync {
				continue
			}
			if r.Addr == n.addr() {
				mine = true
			} else {
				holders++
			}
		}
		if mine && holders == 0 {
			return true
		}
	}
	// The replicas' own view: the newest generation any of them holds is
	// the current in-sync set's (a record may lag it, or be lost).
	var best uint64
	var holders []*node
	for _, m := range s.nodes {
		var fsys replication.FileSystem
		if m.fs != nil {
			fsys = m.fs
		}
		meta, err := replication.ReadMetaOn(fsys, m.dir, volume)
		if err != nil {
			continue
		}
		switch g := meta.Membership.Gen; {
		case g > best:
			best, holders = g, []*node{m}
		case g == best:
			holders = append(holders, m)
		}
	}
	if best > 0 && len(holders) == 1 && holders[0] == n {
		return true
	}
	newest := s.coord.newestRecord()
	if newest == nil || !slices.Contains(newest.Replicas, n.addr()) {
		return false
	}
	for _, m := range s.nodes {
		if m != n && m.holds(newest) {
			return false
		}
	}
	return true
}

// markUndetectable records that a primary was promoted over a rolled-back
// record no one could tell from a current one.
func (s *simulation) markUndetectable() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.res.Undetectable {
		s.res.Undetectable = true
		s.res.Schedule = append(s.res.Schedule, "promoted over a rolled-back in-sync record with every holder of the newest generation unreachable (undetectable by design)")
	}
}

// undetectableRollback reports whether the in-sync record is older than
// the newest one a primary wrote (rolled back) while every replica of that
// newest set is unreachable: a promotion now cannot tell the record from
// a current one.
func (s *simulation) undetectableRollback() bool {
	rec, ok := s.coord.read()
	newest := s.coord.newestRecord()
	if !ok || newest == nil || rec.Gen >= newest.Gen {
		return false
	}
	for _, n := range s.nodes {
		if n.holds(newest) && !n.impaired() {
			return false // a holder of the newest generation answers
		}
	}
	return true
}

// promotedWithoutHolders reports whether eng started from a record older
// than newest, the newest one a primary had written when it began (or
// from none: the record was lost)
// with none of the newest set's replicas (not wiped since) among those it
// took as in sync: it could not tell its record from a current one. The
// judgement before a promotion misses a holder that fails while the
// promotion runs (seed 408810055).
func (s *simulation) promotedWithoutHolders(rec *replication.Membership, newest *inSyncRecord, eng *replication.Engine) bool {
	var recGen uint64
	if rec != nil {
		recGen = rec.Gen
	}
	if newest == nil || recGen >= newest.Gen {
		return false
	}
	for _, r := range eng.Status().Replicas {
		for _, n := range s.nodes {
			if r.State == replication.StateInSync && n.addr() == r.Addr && n.holds(newest) {
				return false
			}
		}
	}
	return true
}

// promoteRetry retries promotion (each attempt a new epoch, as a node
// agent retrying the lock would) until it succeeds or attempts run out.
func (s *simulation) promoteRetry(ctx context.Context, attempts int) (*primary, error) {
	var err error
	for range attempts {
		var p *primary
		if p, err = s.promote(ctx); err == nil {
			return p, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil, err
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
		px, err := newFaultProxy(cfg.Seed*16 + uint64(i))
		if err != nil {
			s.problem("setup: %v", err)
			return res
		}
		proxies.Go(func() { px.serve(pctx) })
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

// step is one drawn schedule step; every field is drawn for every step so
// a seed yields the same sequence whatever happens at run time.
type step struct {
	fault Fault
	node  int
	pause time.Duration
	dur   time.Duration
	frac  float64
	mask  int
}

func (s *simulation) drawSteps() []step {
	var enabled []Fault
	for _, f := range AllFaults {
		if s.cfg.Faults[f] {
			enabled = append(enabled, f)
		}
	}
	steps := make([]step, s.cfg.Steps)
	for i := range steps {
		st := step{node: s.rng.IntN(s.cfg.Replicas), pause: time.Duration(s.rng.IntN(30)) * time.Millisecond,
			dur: time.Duration(5+s.rng.IntN(int(replicaTimeout/time.Millisecond)*3/2)) * time.Millisecond, frac: s.rng.Float64(), mask: s.rng.IntN(1 << 8)}
		f := s.rng.IntN(len(enabled) + 2)
		if f < len(enabled) {
			st.fault = enabled[f]
		} // else: only workload during the pause
		steps[i] = st
	}
	return steps
}

// schedule runs the drawn steps while the writers run.
func (s *simulation) schedule(ctx context.Context) {
	time.Sleep(20 * time.Millisecond) // some data first
	for _, st := range s.drawSteps() {
		if ctx.Err() != nil {
			return
		}
		time.Sleep(st.pause)
		s.restartTrapped()
		s.mu.Lock()
		noPrimary := s.current == nil
		s.mu.Unlock()
		if noPrimary {
			s.tryPromote(ctx, 1) // the next step tries again
		}
		s.inject(ctx, st)
	}
	time.Sleep(20 * time.Millisecond)
}

func (s *simulation) tryPromote(ctx context.Context, attempts int) {
	p, err := s.promoteRetry(ctx, attempts)
	if err != nil {
		s.note("promotion failed: %v", err)
		return
	}
	s.mu.Lock()
	s.current = p
	s.mu.Unlock()
	s.note("promoted primary at epoch %d", p.epoch)
}

// replicaFaults impair a replica.
var replicaFaults = []Fault{FaultKill, FaultPowerLoss, FaultWipe, FaultPartition, FaultHold, FaultDiskFull, FaultWipeFailover,
	FaultPromotionFault, FaultResyncPowerLoss, FaultPersistCrash}

func (s *simulation) inject(ctx context.Context, st step) {
	n := s.nodes[st.node]
	if !s.cfg.Faults[FaultAllDown] && slices.Contains(replicaFaults, st.fault) && !n.impaired() && s.lastHealthy(n) {
		return // the last healthy in-sync replica stays so
	}
	if (st.fault == FaultWipe || st.fault == FaultWipeFailover) && s.soleHolder(n) {
		// Destroying the only replica of the newest generation is a
		// second failure on top of the one that made it the only one:
		// nothing can survive that, and the product rightly refuses to
		// serve the volume then (TestWipedReplicaNeverServed).
		return
	}
	switch st.fault {
	case "":
	case FaultKill, FaultPowerLoss, FaultWipe:
		if !n.up {
			if err := s.startNode(n); err != nil {
				s.problem("restart node%d: %v", n.i, err)
				return
			}
			s.note("restart node%d", n.i)
			return
		}
		switch st.fault {
		case FaultKill:
			s.killNode(n)
			s.note("SIGKILL node%d", n.i)
		case FaultPowerLoss:
			s.powerCutOrKill(n, true, "") // a real process on real files: only a kill
		case FaultWipe:
			if s.wipeAndRestart(n) {
				s.note("wipe node%d and restart it empty", n.i)
			}
		}
	case FaultWipeFailover:
		s.mu.Lock()
		p := s.current
		s.current = nil
		s.mu.Unlock()
		if p != nil {
			s.crash(p)
		}
		if !s.wipeAndRestart(n) {
			return
		}
		s.note("crash the primary, wipe node%d and restart it empty, promote", n.i)
		s.tryPromote(ctx, 2)
	case FaultPartition:
		n.cut = !n.cut
		n.proxy.setCut(n.cut)
		s.note("partition node%d: %v", n.i, n.cut)
	case FaultDelay:
		n.delayed = !n.delayed
		d := time.Duration(0)
		if n.delayed {
			d = time.Duration(1+int(st.frac*4)) * time.Millisecond
		}
		n.proxy.setDelay(d)
		s.note("delay node%d up to %s per connection", n.i, d)
	case FaultHold:
		n.proxy.setHold(true)
		n.held.Add(1)
		s.note("hold node%d's frames for %s", n.i, st.dur)
		time.AfterFunc(st.dur, func() {
			n.proxy.setHold(false)
			n.held.Add(-1)
		})
	case FaultDiskFull:
		n.diskFull = !n.diskFull
		if err := s.setDiskFull(n, n.diskFull, int64(st.frac*64)*blockSize); err != nil {
			s.problem("disk full node%d: %v", n.i, err)
			return
		}
		s.note("disk full node%d: %v", n.i, n.diskFull)
	case FaultPrimaryCrash:
		s.mu.Lock()
		p := s.current
		s.current = nil
		s.mu.Unlock()
		if p != nil {
			s.crash(p)
			s.note("crash primary of epoch %d", p.epoch)
		}
		time.Sleep(time.Duration(st.frac * float64(50*time.Millisecond))) // the writers see no primary
		s.tryPromote(ctx, 2)
	case FaultPromotionFault:
		s.mu.Lock()
		p := s.current
		s.current = nil
		s.mu.Unlock()
		if p != nil {
			s.crash(p)
			s.note("crash primary of epoch %d", p.epoch)
		}
		// The promotion runs beside this goroutine, which changes the
		// nodes: judge the rollback here, before (node fields are this
		// goroutine's).
		preset := int32(1)
		if s.undetectableRollback() {
			preset = 2
		}
		s.presetUndetectable.Store(preset)
		defer s.presetUndetectable.Store(0)
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.tryPromote(ctx, 2)
		}()
		time.Sleep(time.Duration(st.frac * float64(30*time.Millisecond)))
		faultAt := ^uint64(0)
		if n.up {
			faultAt = s.events.Add(1)
			s.powerCutOrKill(n, st.mask&1 == 1, "during the promotion")
		}
		<-done
		// A promotion attempt begun after the fault (the first failed)
		// met the nodes as they are now: judge it again.
		s.mu.Lock()
		cur := s.current
		s.mu.Unlock()
		if cur != nil && cur.began > faultAt && s.undetectableRollback() {
			s.markUndetectable()
			s.mu.Lock()
			cur.overRollback = true
			s.mu.Unlock()
		}
	case FaultResyncPowerLoss:
		target := s.resyncing()
		if target == nil && n.up {
			// Start a resync: kill and restart a replica, then give the
			// primary a moment to reconnect.
			s.killNode(n)
			if err := s.startNode(n); err != nil {
				s.problem("restart node%d: %v", n.i, err)
				return
			}
			s.note("SIGKILL node%d and restart it", n.i)
			deadline := time.Now().Add(100 * time.Millisecond)
			for target == nil && time.Now().Before(deadline) {
				time.Sleep(2 * time.Millisecond)
				target = s.resyncing()
			}
			time.Sleep(time.Duration(st.frac * float64(10*time.Millisecond)))
		}
		if target != nil && target.up {
			s.powerCutOrKill(target, true, "while it is resynced")
		}
	case FaultPersistCrash:
		if n.fs == nil || !n.up || n.trapped {
			return
		}
		match, what := "peer-", "a peer bitmap"
		if st.mask&1 == 1 {
			match, what = "meta", "its metadata"
		}
		nth := 1 + st.mask>>1&3
		r := rand.New(rand.NewPCG(s.cfg.Seed, 1000+uint64(n.i)))
		n.trapped = true
		// The cut's event is taken at the cut: a flush issued after it
		// but before onFire runs must not count as covering what it lost.
		n.fs.ArmPowerLoss(match, nth, r, s.powerCut, func(lost int) {
			n.boots.Add(1) // it comes back from a new boot
			n.cutByTrap.Store(true)
			s.mu.Lock()
			s.powerLost = true
			s.mu.Unlock()
			s.note("power loss node%d while writing %s (%d unsynced block writes lost)", n.i, what, lost)
		})
		s.note("arm a power cut of node%d at its write #%d to %s", n.i, nth, what)
	case FaultSecondPrimary:
		s.mu.Lock()
		old, prevZombie := s.current, s.zombie
		s.mu.Unlock()
		if prevZombie != nil {
			s.crash(prevZombie)
		}
		p, err := s.promote(ctx)
		if err != nil {
			// It took the lock: the old primary's lease is gone, and the
			// lease layer fences it (Lease.Guard).
			s.mu.Lock()
			if s.current == old {
				s.current = nil
			}
			s.mu.Unlock()
			if old != nil {
				s.crash(old)
			}
			s.note("second primary failed (the old one lost its lease and stops): %v", err)
			return
		}
		s.mu.Lock()
		s.current, s.zombie = p, old
		clear(s.zombieFor)
		for w := range s.writers {
			if st.mask&(1<<w) != 0 {
				s.zombieFor[w] = true
			}
		}
		s.mu.Unlock()
		s.note("second primary at epoch %d while the old one runs on (writers %b stay with it)", p.epoch, st.mask&(1<<len(s.writers)-1))
	case FaultRecordLost:
		s.coord.loseRecord()
		s.note("in-sync record lost")
	case FaultRecordRollback:
		if rec, ok := s.coord.rollBack(st.frac); ok {
			s.note("in-sync record rolled back to epoch %d %v", rec.Epoch, s.names(rec.Replicas))
		}
	case FaultLockReset:
		s.note("lock index reset to %d", s.coord.resetLockIndex(st.frac))
	case FaultConsulBlip:
		s.coord.setBlip(true)
		s.note("consul blip for %s", st.dur)
		time.AfterFunc(st.dur, func() { s.coord.setBlip(false) })
	}
}

// restartTrapped restarts the nodes a persistcrash trap powered off, and
// forgets the traps that did not fire when called for the recovery.
func (s *simulation) restartTrapped() {
	for _, n := range s.nodes {
		if n.cutByTrap.Swap(false) {
			n.trapped = false
			s.stopNode(n)
			if err := s.startNode(n); err != nil {
				s.problem("restart node%d: %v", n.i, err)
				continue
			}
			s.note("restart node%d after its power cut", n.i)
		}
	}
}

// wipeAndRestart kills n, deletes its data and starts it empty; false
// (reported) when that failed.
func (s *simulation) wipeAndRestart(n *node) bool {
	s.killNode(n)
	if err := s.wipeNode(n); err != nil {
		s.problem("wipe node%d: %v", n.i, err)
		return false
	}
	if err := s.startNode(n); err != nil {
		s.problem("restart node%d: %v", n.i, err)
		return false
	}
	return true
}

// powerCutOrKill power-cuts n (in process, when power is true) or kills it.
func (s *simulation) powerCutOrKill(n *node, power bool, when string) {
	if power && n.fs != nil {
		s.powerCut()
		lost := n.fs.PowerLoss(s.dead)
		n.boots.Add(1) // it comes back from a new boot
		s.stopNode(n)
		s.mu.Lock()
		s.powerLost = true
		s.mu.Unlock()
		s.note("power loss node%d %s (%d unsynced block writes lost)", n.i, when, lost)
		return
	}
	s.killNode(n)
	s.note("SIGKILL node%d %s", n.i, when)
}

// resyncing returns a node the current primary is resyncing, if any.
func (s *simulation) resyncing() *node {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	if cur == nil {
		return nil
	}
	for _, r := range cur.eng.Status().Replicas {
		if r.State == replication.StateResyncing {
			for _, n := range s.nodes {
				if n.addr() == r.Addr {
					return n
				}
			}
		}
	}
	return nil
}

// lastHealthy reports whether n is the last unimpaired replica, or the
// last unimpaired one the current primary has in sync: impairing it
// would leave the volume no replica to serve from.
func (s *simulation) lastHealthy(n *node) bool {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	var inSync map[string]bool
	if cur != nil {
		inSync = map[string]bool{}
		for _, r := range cur.eng.Status().Replicas {
			if r.State == replication.StateInSync {
				inSync[r.Addr] = true
			}
		}
	}
	for _, m := range s.nodes {
		if m != n && !m.impaired() && (inSync == nil || inSync[m.addr()]) {
			return false
		}
	}
	return true
}

// names turns replica addresses into node names for the report.
func (s *simulation) names(addrs []string) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a
		for _, n := range s.nodes {
			if n.addr() == a {
				out[i] = fmt.Sprintf("node%d", n.i)
			}
		}
	}
	return out
}

// recoverAndCheck heals every fault, recovers as the product would, waits
// for every replica to be in sync, then checks the data.
func (s *simulation) recoverAndCheck(ctx context.Context) {
	s.coord.setBlip(false)
	s.restartTrapped()
	for _, n := range s.nodes {
		if n.fs != nil && n.trapped {
			n.fs.Disarm()
			n.trapped = false
		}
	}
	s.restartTrapped() // one may have fired before it was disarmed
	for _, n := range s.nodes {
		n.proxy.setHold(false)
		n.proxy.setDelay(0)
		if n.cut {
			n.proxy.setCut(false)
		}
		n.cut, n.delayed = false, false
		if n.diskFull {
			if err := s.setDiskFull(n, false, 0); err != nil {
				s.problem("recovery: node%d: %v", n.i, err)
			}
		}
		n.diskFull = false
		if !n.up {
			if err := s.startNode(n); err != nil {
				s.problem("recovery: restart node%d: %v", n.i, err)
			}
		}
	}
	s.mu.Lock()
	cur, zombie := s.current, s.zombie
	s.zombie = nil
	s.mu.Unlock()
	if zombie != nil {
		s.crash(zombie)
	}
	// Half the schedules end with a primary crash and a fresh promotion
	// (activity-log reconciliation), the others keep the running primary.
	if cur != nil && (cur.eng.Fenced() || s.rng.IntN(2) == 0) {
		s.crash(cur)
		cur = nil
	}
	if cur == nil {
		p, err := s.promoteRetry(ctx, 40)
		if err != nil {
			s.problem("recovery: no primary could be promoted: %v", err)
			return
		}
		cur = p
		s.note("recovery: promoted primary at epoch %d", p.epoch)
	} else {
		s.note("recovery: primary of epoch %d stays", cur.epoch)
	}
	// Wait for every replica to be in sync; with none in sync the
	// engine has nothing to resync from, and waiting longer is useless.
	began := time.Now()
	deadline := began.Add(recoveryWait)
	st := cur.eng.Status()
	for st.InSync < len(s.nodes) && time.Now().Before(deadline) && !st.Fenced &&
		(st.InSync > 0 || time.Since(began) < time.Second) {
		time.Sleep(10 * time.Millisecond)
		st = cur.eng.Status()
	}
	if st.InSync < len(s.nodes) {
		var why []string
		for _, r := range st.Replicas {
			if r.State != replication.StateInSync {
				why = append(why, fmt.Sprintf("%s %s (%s)", s.names([]string{r.Addr})[0], r.State, r.Reason))
			}
		}
		s.problem("recovery: only %d of %d replicas in sync after %s: %s", st.InSync, len(s.nodes),
			time.Since(began).Round(time.Millisecond), strings.Join(why, "; "))
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := cur.eng.Flush(fctx)
	if errors.Is(err, replication.ErrUnflushedLost) {
		// The last in-sync replica lost power with writes not yet flushed:
		// reported once, as it must be; the writes it names never had a
		// completed flush, so the model does not require them.
		err = cur.eng.Flush(fctx)
	}
	if err != nil {
		s.problem("recovery: flush: %v", err)
	}
	var inSync []*node
	for _, r := range cur.eng.Status().Replicas {
		if r.State == replication.StateInSync {
			for _, n := range s.nodes {
				if n.addr() == r.Addr {
					inSync = append(inSync, n)
				}
			}
		}
	}
	s.crash(cur)
	if s.cfg.beforeCheck != nil {
		s.cfg.beforeCheck(s, inSync)
	}
	s.check(inSync)
}

// check compares the in-sync replicas with each other and with the model.
func (s *simulation) check(inSync []*node) {
	if len(inSync) == 0 {
		s.problem("check: no replica in sync")
		return
	}
	var first []byte
	lost := map[int64]string{}
	for i, n := range inSync {
		data, err := n.readData()
		if err != nil {
			s.problem("check: node%d: %v", n.i, err)
			continue
		}
		if i == 0 {
			first = data
		} else if first != nil && !bytes.Equal(first, data) {
			// Even after a promotion over a rolled-back record, which may
			// serve stale data, the in-sync replicas must be identical.
			s.mu.Lock() // an abandoned engine's goroutines may still report
			s.res.DivergentReplicas++
			s.mu.Unlock()
			s.problem("divergent: node%d differs from node%d in %s%s", n.i, inSync[0].i, diffSummary(first, data),
				s.describeDiff(inSync[0].i, first, n.i, data))
		}
		for _, w := range s.writers {
			for b := w.lo; b < w.hi; b++ {
				blk := data[b*blockSize : (b+1)*blockSize]
				if _, seen := lost[b]; seen || (i > 0 && first != nil && bytes.Equal(blk, first[b*blockSize:(b+1)*blockSize])) {
					continue // already reported, or same as a block already checked
				}
				if ok, why := w.allowed(b, blk, s.mustSurvive, s.survivalWhy); !ok {
					lost[b] = fmt.Sprintf("node%d: %s", n.i, why)
				}
			}
		}
	}
	s.mu.Lock()
	undetectable := s.res.Undetectable
	if undetectable {
		s.res.UndetectableLost = len(lost)
	} else {
		s.res.AckedWritesLost = len(lost)
	}
	s.mu.Unlock()
	if undetectable {
		if len(lost) > 0 {
			s.note("%d blocks read older versions after a promotion over a rolled-back record (undetectable by design)", len(lost))
		}
		return
	}
	shown := 0
	for b := range int64(len(first) / blockSize) {
		if why, ok := lost[b]; ok && shown < 3 {
			s.problem("lost: %s", why)
			shown++
		}
	}
	if len(lost) > shown {
		s.problem("lost: ... %d blocks in all", len(lost))
	}
}

// diffSummary says how many blocks differ and where the first one is.
// describeDiff names, for the first few blocks where node ia's data a and
// node ib's data b differ, the version each holds and the block's history
// of ops: what reached which replica, to read beside the schedule's log.
func (s *simulation) describeDiff(ia int, a []byte, ib int, b []byte) string {
	var sb strings.Builder
	shown := 0
	for blk := int64(0); (blk+1)*blockSize <= int64(min(len(a), len(b))) && shown < 4; blk++ {
		x, y := a[blk*blockSize:(blk+1)*blockSize], b[blk*blockSize:(blk+1)*blockSize]
		if bytes.Equal(x, y) {
			continue
		}
		shown++
		fmt.Fprintf(&sb, "\n    block %d: node%d holds %s, node%d holds %s", blk, ia, describeVersion(x, blk), ib, describeVersion(y, blk))
		for _, w := range s.writers {
			if blk >= w.lo && blk < w.hi {
				for _, op := range w.hist[blk-w.lo] {
					fmt.Fprintf(&sb, "\n      writer %d %s", w.id, op)
				}
			}
		}
	}
	return sb.String()
}

// describeVersion names the version a block holds.
func describeVersion(b []byte, blk int64) string {
	zero, w, seq, ok := version(b, blk)
	switch {
	case !ok:
		return "content no write put there"
	case zero:
		return "zeroes"
	}
	return fmt.Sprintf("writer %d op %d", w, seq)
}

func diffSummary(a, b []byte) string {
	n, firstBlk := 0, int64(-1)
	for i := 0; i+blockSize <= len(a) && i+blockSize <= len(b); i += blockSize {
		if string(a[i:i+blockSize]) != string(b[i:i+blockSize]) {
			if firstBlk < 0 {
				firstBlk = int64(i / blockSize)
			}
			n++
		}
	}
	return fmt.Sprintf("%d blocks (first: block %d)", n, firstBlk)
}
