package sim

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/internal/faultproxy"
)

// Without faults (and with a generous timeout, so a busy machine drops no
// replica) every schedule must pass: otherwise the harness or its model
// is wrong, or the data plane loses writes with nothing going wrong.
func TestFaultFreeSchedulesPass(t *testing.T) {
	none, err := ParseFaults("none")
	must.NoError(t, err)
	for seed := uint64(1); seed <= 3; seed++ {
		res := Run(context.Background(), Config{Seed: seed, Faults: none, Timeout: 10 * time.Second, Steps: 6})
		must.SliceEmpty(t, res.Problems, must.Sprintf("seed %d: %v", seed, res.Problems))
		must.Positive(t, res.Acked)
		must.Positive(t, res.Flush)
	}
}

// The checks must see damage: an acknowledged write reverted on one
// replica behind the data plane's back is a lost write and a divergence.
func TestCheckerCatchesARevertedWrite(t *testing.T) {
	none, err := ParseFaults("none")
	must.NoError(t, err)
	damaged := false
	cfg := Config{Seed: 42, Faults: none, Timeout: 10 * time.Second, Steps: 4,
		beforeCheck: func(s *simulation, inSync []*node) {
			must.Len(t, 3, inSync)
			// Any writer's block whose newest op is an acknowledged
			// write will do: on a slow machine (the race detector) one
			// writer may have had none acknowledged.
			for _, w := range s.writers {
				for i, ops := range w.hist {
					if len(ops) > 0 && ops[len(ops)-1].acked && !ops[len(ops)-1].trim {
						n := inSync[1]
						f, err := n.fs.OpenFile(filepath.Join(n.dir, volume, "data"), os.O_RDWR, 0)
						must.NoError(t, err)
						_, err = f.WriteAt(make([]byte, blockSize), (w.lo+int64(i))*blockSize)
						must.NoError(t, err)
						must.NoError(t, f.Close())
						damaged = true
						return
					}
				}
			}
		}}
	res := Run(context.Background(), cfg)
	must.True(t, damaged)
	must.Eq(t, 1, res.AckedWritesLost, must.Sprint(res.Problems))
	must.Eq(t, 1, res.DivergentReplicas, must.Sprint(res.Problems))
}

func TestParseFaults(t *testing.T) {
	all, err := ParseFaults("")
	must.NoError(t, err)
	must.MapLen(t, len(AllFaults), all)
	some, err := ParseFaults("-powerloss,-wipe")
	must.NoError(t, err)
	must.False(t, some[FaultPowerLoss])
	must.True(t, some[FaultKill])
	only, err := ParseFaults("kill,partition")
	must.NoError(t, err)
	must.Eq(t, "kill,partition", only.String())
	none, err := ParseFaults("none")
	must.NoError(t, err)
	must.Eq(t, "none", none.String())
	_, err = ParseFaults("meteor")
	must.Error(t, err)
}

// Replicas as real processes on real files: SIGKILL is a real kill, disk
// full a real full tmpfs (as root), a wipe a real rm -r. A few schedules
// with only those faults, to keep the real path honest; TestTorture
// -processes runs more. Failures are reported like TestTorture's.
func TestTortureProcesses(t *testing.T) {
	spec := "kill,wipe,diskfull,partition,primarycrash"
	if raceDetector {
		spec = "kill,diskfull,partition,primarycrash" // see race_test.go
	}
	faults, err := ParseFaults(spec)
	must.NoError(t, err)
	acked := 0
	for seed := uint64(1); seed <= 3; seed++ {
		res := Run(context.Background(), Config{Seed: seed, Faults: faults, Processes: true, Steps: 8, Timeout: raceTimeout})
		acked += res.Acked
		for _, p := range res.Problems {
			if strings.HasPrefix(p, "setup") {
				t.Fatalf("seed %d: %s", seed, p)
			}
		}
		report(t, res, faults, false)
	}
	must.Positive(t, acked)
}

// A replica process whose tmpfs is full: the primary drops it naming "no
// space left", keeps serving from the others, and resyncs it once there
// is room again (real files, a real full tmpfs; needs root).
func TestProcessReplicaDiskFullOnTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a small tmpfs per replica: run it as root")
	}
	none, err := ParseFaults("none")
	must.NoError(t, err)
	s := &simulation{cfg: Config{Seed: 1, Faults: none, Processes: true, Replicas: 3, Size: 16 << 20, Timeout: 5 * time.Second},
		log: hclog.NewNullLogger(), ctx: context.Background(), res: &Result{}, began: time.Now(), zombieFor: map[int]bool{}}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	for i := range 3 {
		px, err := faultproxy.Listen(uint64(i))
		must.NoError(t, err)
		go px.Serve(ctx)
		n, err := s.newNode(i, px)
		must.NoError(t, err)
		must.True(t, n.tmpfs)
		t.Cleanup(func() { s.killNode(n); s.cleanupNode(n) })
		must.NoError(t, s.startNode(n))
		s.nodes = append(s.nodes, n)
	}
	p, err := s.promote(ctx)
	must.NoError(t, err)
	defer p.eng.Close()

	full := s.nodes[2]
	must.NoError(t, s.setDiskFull(full, true, 0))
	chunk := bytes.Repeat([]byte{0x5a}, 1<<20)
	for off := int64(0); off < 8<<20; off += 1 << 20 {
		must.NoError(t, p.eng.WriteAt(ctx, chunk, off, false))
	}
	must.NoError(t, p.eng.Flush(ctx))
	st := p.eng.Status()
	must.Eq(t, 2, st.InSync)
	must.NotEq(t, replication.StateInSync, st.Replicas[2].State)
	must.StrContains(t, st.Replicas[2].Reason, "no space left")

	must.NoError(t, s.setDiskFull(full, false, 0))
	deadline := time.Now().Add(20 * time.Second)
	for p.eng.Status().InSync < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	must.Eq(t, 3, p.eng.Status().InSync)
	must.NoError(t, p.eng.Flush(ctx))
	a, err := s.nodes[0].readData()
	must.NoError(t, err)
	b, err := full.readData()
	must.NoError(t, err)
	must.True(t, bytes.Equal(a, b), must.Sprint("the resynced replica differs"))
	must.True(t, bytes.Equal(chunk, b[7<<20:8<<20]))
}
