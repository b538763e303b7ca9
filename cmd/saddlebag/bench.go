package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"

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
	only := fs.String("only", "", "comma-separated sections to run: "+strings.Join(bench.Sections, ", ")+" (default: all)")
	syncOps := fs.Int("sync-ops", 2000, "4 KiB write+flush operations per latency round")
	depth := fs.Int("depth", 8, "writes in flight for the second sequential run")
	rounds := fs.Int("rounds", 3, "interleaved rounds per figure (the median is printed)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var sections []string
	if *only != "" {
		for _, sec := range strings.Split(*only, ",") {
			if !slices.Contains(bench.Sections, sec) {
				return usageError{fmt.Errorf("--only: unknown section %q (sections: %s)", sec, strings.Join(bench.Sections, ", "))}
			}
			sections = append(sections, sec)
		}
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
		SyncOps: *syncOps, ResyncBytes: int64(resyncBytes), Only: sections, Rounds: *rounds, Depth: *depth, Log: newLogger("saddlebag", "warn")})
}
