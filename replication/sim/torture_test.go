package sim

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// Flags (or the environment variables in brackets, prefixed TORTURE_,
// which make torture sets from SEED=, DURATION=, ...): -seed [SEED] replays one schedule (-repeat [REPEAT] times:
// the fault schedule replays exactly, goroutine interleavings do not);
// -seeds [SEEDS] runs that many from -first [FIRST]; -duration [DURATION]
// runs schedules until it has passed; -faults [FAULTS] picks the fault
// classes ("-powerloss,-wipe" disables two, "kill,partition" enables only
// those, "none" none); -parallel-schedules [PARALLEL] runs that many at
// once (default 8, 2 under the race detector; with -seed 1 unless given, so a seed can be repeated
// under load); -simlog [LOG=1] prints the replicas' and engines' logs;
// -simlog-failed [LOG=failed] prints them, at trace level, only for the
// schedules that failed; -processes [PROCESSES=1] runs the replicas as real processes on
// real files (tmpfs as root: SIGKILL and disk full for real, no power
// loss); -steps [STEPS] sets the fault steps per schedule (default 14:
// fewer run faster, and a seed's first n steps are the same whatever the
// count); -strict [STRICT=1] fails the test when any schedule fails.
var (
	flagSeed     = flag.String("seed", os.Getenv("TORTURE_SEED"), "replay this seed only")
	flagSeeds    = flag.String("seeds", os.Getenv("TORTURE_SEEDS"), "number of schedules")
	flagFirst    = flag.String("first", os.Getenv("TORTURE_FIRST"), "first seed")
	flagDuration = flag.String("duration", os.Getenv("TORTURE_DURATION"), "run schedules for this long")
	flagFaults   = flag.String("faults", os.Getenv("TORTURE_FAULTS"), "fault classes")
	flagParallel = flag.String("parallel-schedules", os.Getenv("TORTURE_PARALLEL"), "schedules run at once")
	flagRepeat   = flag.String("repeat", os.Getenv("TORTURE_REPEAT"), "with -seed: run the seed this many times")
	flagLog      = flag.Bool("simlog", os.Getenv("TORTURE_LOG") == "1", "print the data plane's logs")
	flagLogFail  = flag.Bool("simlog-failed", os.Getenv("TORTURE_LOG") == "failed", "print the data plane's logs of failed schedules")
	flagProcs    = flag.Bool("processes", os.Getenv("TORTURE_PROCESSES") == "1", "replicas as real processes on real files")
	flagSteps    = flag.Int("steps", envInt("TORTURE_STEPS"), "fault steps per schedule (default 14)")
	flagStrict   = flag.Bool("strict", os.Getenv("TORTURE_STRICT") == "1", "fail the test when a schedule fails")
)

// TestTorture runs crash-and-fault schedules and prints what they found.
// By default (make test) it runs for about a minute. Any safety violation
// (an acknowledged write lost, replicas different, a fenced primary's
// write accepted, a write failed by a Consul blip) fails it; a schedule
// that only did not recover in time is reported, and fails it only with
// -strict (timing on a shared machine); a replay (-seed) fails on any
// failing schedule.
func TestTorture(t *testing.T) {
	spec := *flagFaults
	if spec == "" && raceDetector && raceNoFaults != "" {
		spec = raceNoFaults
		fmt.Println(raceFaultNote)
	}
	faults, err := ParseFaults(spec)
	must.NoError(t, err)
	var log hclog.Logger
	if *flagLog {
		log = hclog.New(&hclog.LoggerOptions{Name: "sim", Level: hclog.Debug, Output: os.Stderr})
	}
	// Schedules mostly wait (timeouts, back-off, sleeps between steps):
	// 8 at once use about half of this 2-core machine; under the race
	// detector each costs several times more CPU.
	parallel := 8
	if raceDetector {
		parallel = 2
	}
	if *flagParallel != "" {
		parallel, err = strconv.Atoi(*flagParallel)
		must.NoError(t, err)
	}
	var seeds []uint64
	duration := time.Duration(0)
	switch {
	case *flagSeed != "":
		seed, err := strconv.ParseUint(*flagSeed, 10, 64)
		must.NoError(t, err)
		seeds = []uint64{seed}
		if *flagParallel == "" {
			parallel = 1
		}
		if *flagRepeat != "" {
			n, err := strconv.Atoi(*flagRepeat)
			must.NoError(t, err)
			for range n - 1 {
				seeds = append(seeds, seed)
			}
		}
	case *flagSeeds != "":
		n, err := strconv.Atoi(*flagSeeds)
		must.NoError(t, err)
		first := uint64(1)
		if *flagFirst != "" {
			first, err = strconv.ParseUint(*flagFirst, 10, 64)
			must.NoError(t, err)
		}
		for i := range n {
			seeds = append(seeds, first+uint64(i))
		}
	default:
		duration = 60 * time.Second
		if testing.Short() {
			duration = 10 * time.Second
		}
		if *flagDuration != "" {
			duration, err = time.ParseDuration(*flagDuration)
			must.NoError(t, err)
		}
	}
	first := uint64(time.Now().UnixNano()%1_000_000) * 1000
	if *flagFirst != "" {
		first, err = strconv.ParseUint(*flagFirst, 10, 64)
		must.NoError(t, err)
	}

	var (
		mu                                                       sync.Mutex
		schedules, lost, divergent                               int
		fenced, failed, issued, acked                            int
		blip, undetectable, undetectableLost, undetectableFenced int
		next                                                     atomic.Uint64
		wg                                                       sync.WaitGroup
	)
	replay := *flagSeed != ""
	end := time.Now().Add(duration)
	nextSeed := func() (uint64, bool) {
		i := next.Add(1) - 1
		if seeds != nil {
			if i >= uint64(len(seeds)) {
				return 0, false
			}
			return seeds[i], true
		}
		return first + i, time.Now().Before(end)
	}
	for range parallel {
		wg.Go(func() {
			for {
				seed, ok := nextSeed()
				if !ok {
					return
				}
				slog, buf := log, (*bytes.Buffer)(nil)
				if *flagLogFail {
					buf = new(bytes.Buffer)
					slog = hclog.New(&hclog.LoggerOptions{Name: "sim", Level: hclog.Trace, Output: &lockedWriter{w: buf}})
				}
				res := Run(context.Background(), Config{Seed: seed, Faults: faults, Log: slog, Processes: *flagProcs,
					Timeout: raceTimeout, Steps: *flagSteps})
				mu.Lock()
				if buf != nil && res.Failed() {
					fmt.Printf("--- log of seed %d\n%s--- end of the log of seed %d\n", seed, buf.String(), seed)
				}
				schedules++
				lost += res.AckedWritesLost
				if res.Undetectable {
					undetectable++
					undetectableLost += res.UndetectableLost
					undetectableFenced += res.UndetectableFenced
				}
				divergent += res.DivergentReplicas
				fenced += res.FencedWritesAccepted
				blip += res.BlipWriteErrors
				issued += res.Issued
				acked += res.Acked
				if res.Failed() || replay {
					if res.Failed() {
						failed++
					}
					report(t, res, faults, replay)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	fmt.Printf("torture_schedules %d\n", schedules)
	fmt.Printf("torture_failed_schedules %d\n", failed)
	fmt.Printf("acked_writes_lost %d\n", lost)
	fmt.Printf("divergent_replicas %d\n", divergent)
	fmt.Printf("fenced_writes_accepted %d\n", fenced)
	fmt.Printf("blip_write_errors %d\n", blip)
	fmt.Printf("rollback_undetectable_schedules %d (blocks read older: %d, writes of a primary left unfenced: %d)\n",
		undetectable, undetectableLost, undetectableFenced)
	fmt.Printf("torture_ops issued=%d acked=%d\n", issued, acked)
	must.Positive(t, schedules)
	must.Positive(t, acked) // the workload did run
	if lost+divergent+fenced+blip > 0 {
		t.Fatalf("safety violated: %d acknowledged writes lost, %d divergent replicas, %d fenced writes accepted, %d writes failed by a Consul blip",
			lost, divergent, fenced, blip)
	}
	if failed > 0 && (*flagStrict || replay) {
		t.Fatalf("%d of %d schedules failed", failed, schedules)
	}
	if failed > 0 {
		t.Logf("%d of %d schedules failed on liveness only (recovery too slow on this machine?); -strict makes that a test failure", failed, schedules)
	}
}

func report(t *testing.T, res *Result, faults FaultSet, verbose bool) {
	t.Helper()
	status := "ok"
	if res.Failed() {
		status = "FAIL"
	}
	fmt.Printf("%s seed=%d: %d issued, %d acked, %s; lost=%d divergent=%d fenced=%d blip=%d\n", status, res.Seed,
		res.Issued, res.Acked, res.Duration.Round(time.Millisecond), res.AckedWritesLost, res.DivergentReplicas,
		res.FencedWritesAccepted, res.BlipWriteErrors)
	for _, p := range res.Problems {
		fmt.Printf("  %s\n", strings.ReplaceAll(p, "\n", "; ")) // joined errors span lines
	}
	if res.Failed() || verbose {
		fmt.Printf("  schedule:\n")
		for _, s := range res.Schedule {
			fmt.Printf("    %s\n", s)
		}
	}
	if res.Failed() {
		replay := fmt.Sprintf("make torture SEED=%d", res.Seed)
		if all, _ := ParseFaults(""); faults.String() != all.String() {
			replay += fmt.Sprintf(" FAULTS=%s", *flagFaults)
		}
		if *flagProcs {
			replay += " PROCESSES=1"
		}
		if *flagSteps != 0 {
			replay += fmt.Sprintf(" STEPS=%d", *flagSteps)
		}
		fmt.Printf("replay: %s\n", replay)
	}
}

// lockedWriter serializes the writes of a schedule's goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func envInt(name string) int {
	n, _ := strconv.Atoi(os.Getenv(name))
	return n
}
