package bench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/saddlebag/saddlebag/replication"
)

// runResync measures resync after an outage: one replica is stopped, the
// volume takes scattered random writes, the replica comes back and is
// resynced from its bitmap. It prints the bytes sent over the bytes written
// while away, and the resync rate next to a raw copy of the same number of
// bytes between two files on the same disk.
func runResync(ctx context.Context, out io.Writer, o Options, source string) error {
	const size = 1 << 30
	dir := filepath.Join(o.Dir, "resync")
	addr, stop, err := startReplica(o.Binary, dir)
	if err != nil {
		return err
	}
	defer func() { stop() }()
	cfg := replication.EngineConfig{Volume: "resync-bench", Size: size, Epoch: 1, Log: o.Log,
		ReconnectInterval: 20 * time.Millisecond,
		Replicas:          []replication.ReplicaConfig{{Addr: source, Local: true}, {Addr: addr}}}
	eng, err := replication.StartEngine(ctx, cfg)
	if err != nil {
		return err
	}
	defer eng.Close()

	stop()
	r := mrand.New(mrand.NewPCG(3, 4))
	buf := make([]byte, 64<<10)
	var away int64
	for away < o.ResyncBytes {
		rand.Read(buf)
		off := int64(r.IntN(size/len(buf))) * int64(len(buf))
		if err := eng.WriteAt(ctx, buf, off, false); err != nil {
			return fmt.Errorf("write while a replica is away: %w", err)
		}
		away += int64(len(buf))
	}
	if err := eng.Flush(ctx); err != nil {
		return err
	}
	if _, stop, err = startReplicaAt(o.Binary, dir, addr); err != nil {
		return err
	}
	var rs *replication.ResyncStatus
	for deadline := time.Now().Add(10 * time.Minute); ; {
		st := eng.Status()
		if st.InSync == 2 {
			rs = st.Replicas[1].Resync
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("resync did not finish: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	rate := float64(rs.SentBytes) / (1 << 20) / rs.Seconds

	raw, err := rawCopyRate(o.Dir, rs.SentBytes)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "# resync after an outage: %d MiB written while away in 64 KiB random writes over 1 GiB; %d MiB sent in %.2fs (%s mode); raw copy of as many bytes between two files on the same disk: %.0f MiB/s\n",
		away>>20, rs.SentBytes>>20, rs.Seconds, rs.Mode, raw)
	fmt.Fprintf(out, "resync_amplification %.3f\n", float64(rs.SentBytes)/float64(away))
	fmt.Fprintf(out, "resync_mib_per_s %.0f\n", rate)
	fmt.Fprintf(out, "raw_disk_copy_mib_per_s %.0f\n", raw)
	return nil
}

// rawCopyRate copies n bytes between two files on the disk under dir, in
// 1 MiB reads and writes with an fdatasync at the end, and returns MiB/s.
func rawCopyRate(dir string, n int64) (float64, error) {
	src, dst := filepath.Join(dir, "raw-src"), filepath.Join(dir, "raw-dst")
	defer os.Remove(src)
	defer os.Remove(dst)
	f, err := os.Create(src)
	if err != nil {
		return 0, err
	}
	if _, err := io.CopyN(f, rand.Reader, n); err != nil {
		f.Close()
		return 0, err
	}
	if err := errors.Join(fdatasync(f), f.Close()); err != nil {
		return 0, err
	}
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	w, err := os.Create(dst)
	if err != nil {
		return 0, err
	}
	defer w.Close()
	start := time.Now()
	if _, err := io.CopyBuffer(w, in, make([]byte, 1<<20)); err != nil {
		return 0, err
	}
	if err := fdatasync(w); err != nil {
		return 0, err
	}
	return float64(n) / (1 << 20) / time.Since(start).Seconds(), nil
}
