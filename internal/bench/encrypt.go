package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"time"

	"github.com/saddlebag/saddlebag/internal/volkey"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/encrypt"
)

// runEncryption compares an encrypted volume with a plain one over the
// same replica servers, side by side: sequential throughput and
// synchronous 4 KiB write latency, rounds interleaved, and the cost of
// opening a volume's key (once per stage).
func runEncryption(ctx context.Context, out io.Writer, o Options, addrs []string) error {
	start := func(volume string) (*replication.Engine, error) {
		cfg := replication.EngineConfig{Volume: volume, Size: o.SeqBytes, Epoch: 1, Log: o.Log}
		for _, a := range addrs {
			cfg.Replicas = append(cfg.Replicas, replication.ReplicaConfig{Addr: a})
		}
		return replication.StartEngine(ctx, cfg)
	}
	plainEng, err := start("bench-plain")
	if err != nil {
		return err
	}
	defer plainEng.Close()
	encEng, err := start("bench-encrypted")
	if err != nil {
		return err
	}
	defer encEng.Close()
	key := make([]byte, encrypt.KeySize)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	enc, err := encrypt.NewDevice(encEng, key)
	clear(key)
	if err != nil {
		return err
	}
	var plain writer = plainEng

	for _, w := range []writer{plain, enc} {
		if _, err := seqWrite(ctx, w, o.SeqBytes, 1); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	var seqRatio float64
	for _, depth := range []int{1, o.Depth} {
		var ratios, plainRates, encRates []float64
		for r := 0; r < o.Rounds; r++ {
			p, err := seqWrite(ctx, plain, o.SeqBytes, depth)
			if err != nil {
				return fmt.Errorf("plain sequential write: %w", err)
			}
			e, err := seqWrite(ctx, enc, o.SeqBytes, depth)
			if err != nil {
				return fmt.Errorf("encrypted sequential write: %w", err)
			}
			ratios = append(ratios, p.Seconds()/e.Seconds())
			plainRates = append(plainRates, mibPerSec(o.SeqBytes, p))
			encRates = append(encRates, mibPerSec(o.SeqBytes, e))
		}
		fmt.Fprintf(out, "# sequential 1 MiB writes, %d in flight, 2 replicas, median of %d rounds: plain %.0f MiB/s, encrypted (AES-256-XTS) %.0f MiB/s, ratio %.3f\n",
			depth, o.Rounds, median(plainRates), median(encRates), median(ratios))
		if depth == 1 {
			seqRatio = median(ratios)
		}
	}
	fmt.Fprintf(out, "encrypted_write_throughput_ratio %.3f\n", seqRatio)

	// Write+flush pairs alternate between the two volumes op by op, so
	// that drift in the machine's load falls on both alike.
	var plainLat, encLat []time.Duration
	buf := make([]byte, 4096)
	for i := 0; i < o.Rounds*o.SyncOps; i++ {
		buf[0] = byte(i)
		off := int64(i%1024) * 4096
		order := []writer{plain, enc}
		lats := []*[]time.Duration{&plainLat, &encLat}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
			lats[0], lats[1] = lats[1], lats[0]
		}
		for k, w := range order {
			start := time.Now()
			if err := w.WriteAt(ctx, buf, off, false); err != nil {
				return fmt.Errorf("sync writes: %w", err)
			}
			if err := w.Flush(ctx); err != nil {
				return fmt.Errorf("sync writes: %w", err)
			}
			*lats[k] = append(*lats[k], time.Since(start))
		}
	}
	pp, ep := percentile(plainLat, 50), percentile(encLat, 50)
	fmt.Fprintf(out, "# 4 KiB write+flush, %d ops each, 2 replicas: plain p50 %s p99 %s, encrypted p50 %s p99 %s\n",
		len(plainLat), pp, percentile(plainLat, 99), ep, percentile(encLat, 99))
	fmt.Fprintf(out, "encrypted_sync_write_p50_overhead_us %.1f\n", float64(ep-pp)/float64(time.Microsecond))

	// Opening the key: what every NodeStageVolume of an encrypted volume
	// pays before it takes the lease (argon2id at the default cost).
	rec, dk, err := volkey.New("bench", "a bench passphrase", volkey.DefaultParams)
	clear(dk)
	if err != nil {
		return err
	}
	t0 := time.Now()
	dk, err = rec.Open("bench", "a bench passphrase")
	clear(dk)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "# opening a volume key (argon2id t=%d, %d MiB, %d lanes), once per stage: %s\n",
		volkey.DefaultParams.Time, volkey.DefaultParams.MemoryKiB>>10, volkey.DefaultParams.Threads, time.Since(t0).Round(time.Millisecond))
	return nil
}
