package bench

// fs_on_device: ext4 on a Saddlebag volume (2 replicas, FUSE file, loop
// device) against ext4 on a plain loop device over a local file on the
// same disk, measured side by side in one run. Both loop devices do
// direct I/O to their backing file, so neither side gets a second page
// cache; both file systems are mounted noatime.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/saddlebag/saddlebag/plugin/mount"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/frontend/fuse"
)

const (
	fsVolumeSize = 1 << 30   // each file system
	fsSeqBytes   = 256 << 20 // one sequential round
	fsRandFile   = 64 << 20  // the file random writes land in
)

// fsStack is one mounted file system under test and how to take it down.
type fsStack struct {
	name, dir string
	teardown  func() error
}

// runFS measures and prints the fs_on_device figures, using the replica
// servers at addrs for the Saddlebag side.
func runFS(ctx context.Context, out io.Writer, o Options, addrs []string) (err error) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(out, "# fs_on_device: skipped, it attaches loop devices and mounts file systems, which needs root")
		return nil
	}
	var stacks []*fsStack
	defer func() {
		for _, s := range stacks {
			err = errors.Join(err, s.teardown())
		}
	}()
	plain, err := plainStack(ctx, o)
	if err != nil {
		return fmt.Errorf("plain loop file system: %w", err)
	}
	stacks = append(stacks, plain)
	sb, err := saddlebagStack(ctx, o, addrs)
	if err != nil {
		return fmt.Errorf("saddlebag file system: %w", err)
	}
	stacks = append(stacks, sb)

	var seqRatios, plainRates, sbRates []float64
	for r := 0; r < o.Rounds; r++ {
		p, err := fsSeqWrite(plain.dir, fsSeqBytes)
		if err != nil {
			return fmt.Errorf("plain sequential write: %w", err)
		}
		s, err := fsSeqWrite(sb.dir, fsSeqBytes)
		if err != nil {
			return fmt.Errorf("saddlebag sequential write: %w", err)
		}
		seqRatios = append(seqRatios, p.Seconds()/s.Seconds())
		plainRates, sbRates = append(plainRates, mibPerSec(fsSeqBytes, p)), append(sbRates, mibPerSec(fsSeqBytes, s))
	}
	fmt.Fprintf(out, "# ext4 sequential write, %d MiB in 1 MiB writes then fsync, median of %d rounds: plain loop %.0f MiB/s, saddlebag 2 replicas %.0f MiB/s\n",
		fsSeqBytes>>20, o.Rounds, median(plainRates), median(sbRates))
	fmt.Fprintf(out, "fs_on_device_ratio %.3f\n", median(seqRatios))

	for _, s := range stacks {
		if err := fsPrepareRand(s.dir); err != nil {
			return fmt.Errorf("%s: prepare random writes: %w", s.name, err)
		}
	}
	var randRatios, plainIOPS, sbIOPS []float64
	for r := 0; r < o.Rounds; r++ {
		p, err := fsRandWrite(plain.dir, o.SyncOps, uint64(r))
		if err != nil {
			return fmt.Errorf("plain random write: %w", err)
		}
		s, err := fsRandWrite(sb.dir, o.SyncOps, uint64(r))
		if err != nil {
			return fmt.Errorf("saddlebag random write: %w", err)
		}
		randRatios = append(randRatios, p.Seconds()/s.Seconds())
		plainIOPS = append(plainIOPS, float64(o.SyncOps)/p.Seconds())
		sbIOPS = append(sbIOPS, float64(o.SyncOps)/s.Seconds())
	}
	fmt.Fprintf(out, "# ext4 4 KiB random writes each followed by fdatasync, %d per round, median of %d rounds: plain loop %.0f IOPS, saddlebag 2 replicas %.0f IOPS\n",
		o.SyncOps, o.Rounds, median(plainIOPS), median(sbIOPS))
	fmt.Fprintf(out, "fs_on_device_random_ratio %.3f\n", median(randRatios))
	return nil
}

// plainStack is ext4 on a loop device over a local file.
func plainStack(ctx context.Context, o Options) (*fsStack, error) {
	img := filepath.Join(o.Dir, "fs-plain.img")
	f, err := os.Create(img)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(fsVolumeSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	return stageExt4(ctx, o, "plain", img, func() error { return os.Remove(img) })
}

// saddlebagStack is ext4 on a 2-replica volume served through FUSE by an
// engine in this process.
func saddlebagStack(ctx context.Context, o Options, addrs []string) (*fsStack, error) {
	cfg := replication.EngineConfig{Volume: "fsbench", Size: fsVolumeSize, Epoch: 1, Log: o.Log}
	for _, a := range addrs {
		cfg.Replicas = append(cfg.Replicas, replication.ReplicaConfig{Addr: a})
	}
	eng, err := replication.StartEngine(ctx, cfg)
	if err != nil {
		return nil, err
	}
	fm, err := fuse.New(ctx, eng, fuse.Config{Dir: filepath.Join(o.Dir, "fuse"), Name: "fsbench", Log: o.Log})
	if err != nil {
		eng.Close()
		return nil, err
	}
	return stageExt4(ctx, o, "saddlebag", fm.Path(), func() error {
		err := fm.Close()
		eng.Close()
		return err
	})
}

func stageExt4(ctx context.Context, o Options, name, backing string, after func() error) (*fsStack, error) {
	dir := filepath.Join(o.Dir, "mnt-"+name)
	req := mount.StageRequest{BackingFile: backing, StagingPath: dir, FSType: mount.FSExt4,
		MountOptions: []string{"noatime"}, Log: o.Log}
	teardown := func() error {
		err := mount.Unstage(context.WithoutCancel(ctx), mount.UnstageRequest{BackingFile: backing, StagingPath: dir, Lazy: true, Log: o.Log})
		return errors.Join(err, after())
	}
	if _, err := mount.Stage(ctx, req); err != nil {
		return nil, errors.Join(err, teardown())
	}
	return &fsStack{name: name, dir: dir, teardown: teardown}, nil
}

// fsSeqWrite writes a new file of total bytes in 1 MiB writes, fsyncs it
// and returns the time taken; the file is removed afterwards (untimed).
func fsSeqWrite(dir string, total int64) (time.Duration, error) {
	path := filepath.Join(dir, "seq")
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	start := time.Now()
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	for off := int64(0); off < total && err == nil; off += int64(len(buf)) {
		_, err = f.Write(buf)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	d := time.Since(start)
	if err != nil {
		return 0, err
	}
	if err := os.Remove(path); err != nil {
		return 0, err
	}
	return d, syncDir(dir)
}

// fsPrepareRand writes the file random writes overwrite, so that they
// measure overwrites of allocated blocks rather than block allocation.
func fsPrepareRand(dir string) error {
	f, err := os.Create(filepath.Join(dir, "rand"))
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := 0; off < fsRandFile && err == nil; off += len(buf) {
		_, err = f.Write(buf)
	}
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close(), syncDir(dir))
}

// fsRandWrite does n 4 KiB writes at random 4 KiB-aligned offsets of the
// prepared file, each followed by fdatasync, and returns the time taken.
func fsRandWrite(dir string, n int, seed uint64) (time.Duration, error) {
	f, err := os.OpenFile(filepath.Join(dir, "rand"), os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(seed, 0x5add1e))
	buf := make([]byte, 4096)
	start := time.Now()
	for i := 0; i < n; i++ {
		buf[0] = byte(i)
		if _, err := f.WriteAt(buf, int64(rng.IntN(fsRandFile/4096))*4096); err != nil {
			return 0, err
		}
		if err := fdatasync(f); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

func fdatasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}
