package main

import (
	"context"
	"os"

	"github.com/saddlebag/saddlebag/internal/bench"
)

func init() {
	register("bench", "measure replication against the local disk and print ratios", runBench)
}

func runBench(ctx context.Context, args []string) error {
	fs := newFlagSet("bench")
	dir := fs.String("dir", "", "scratch directory on the disk to measure (default: a new temporary directory)")
	var seq sizeFlag = 512 << 20
	fs.Var(&seq, "seq-size", "bytes written per sequential round")
	var resyncBytes sizeFlag = 256 << 20
	fs.Var(&resyncBytes, "resync-size", "bytes written while a replica is away in the resync measurement")
	syncOps := fs.Int("sync-ops", 2000, "4 KiB write+flush operations per latency round")
	depth := fs.Int("depth", 8, "writes in flight for the second sequential run")
	rounds := fs.Int("rounds", 3, "interleaved rounds per figure (the median is printed)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		d, err := os.MkdirTemp("/var/tmp", "saddlebag-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	return bench.Run(ctx, os.Stdout, bench.Options{Dir: *dir, Binary: self, SeqBytes: int64(seq),
		SyncOps: *syncOps, ResyncBytes: int64(resyncBytes), Rounds: *rounds, Depth: *depth, Log: newLogger("saddlebag", "warn")})
}
