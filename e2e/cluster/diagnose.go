package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/saddlebag/saddlebag/internal/procstat"
)

// dumpStall writes what a hung test needs to be understood afterwards:
// each FUSE connection of a file system under the instance's directory
// with the requests it has waiting, every process in the nodes'
// namespaces that sleeps uninterruptibly with its kernel stack, and the
// Go stacks of the Saddlebag processes (SIGQUIT makes the runtime print
// them to the task's stderr log, whose tail follows). Only for a failed
// test: the Saddlebag processes die of the SIGQUIT.
func (c *Cluster) dumpStall(logf func(string, ...any)) {
	if c.Dir == "" {
		return
	}
	var sb strings.Builder
	infos, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Clean(c.Dir)))
	for _, m := range infos {
		if m.Major != 0 || !strings.HasPrefix(m.FSType, "fuse") {
			continue
		}
		w, err := os.ReadFile(filepath.Join("/sys/fs/fuse/connections", strconv.Itoa(m.Minor), "waiting"))
		fmt.Fprintf(&sb, "fuse connection %d at %s: waiting=%s %v\n", m.Minor, m.Mountpoint, strings.TrimSpace(string(w)), err)
	}
	var quit []int
	for _, nd := range c.Nodes {
		pids, _ := netnsPIDs(nd.Netns)
		for _, pid := range pids {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			name := strings.TrimSpace(string(comm))
			if name == "saddlebag" {
				quit = append(quit, pid)
			}
			tids, _ := procstat.Tasks(pid)
			for _, tid := range tids {
				if st, err := procstat.ReadTask(pid, tid); err != nil || st.State != 'D' {
					continue
				}
				stack, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stack", pid, tid))
				fmt.Fprintf(&sb, "%s: %s pid %d thread %d in D state:\n%s", nd.Name, name, pid, tid, stack)
			}
		}
	}
	logf("stall diagnostics:\n%s", sb.String())
	for _, pid := range quit {
		_ = syscall.Kill(pid, syscall.SIGQUIT)
	}
	if len(quit) == 0 {
		return
	}
	time.Sleep(2 * time.Second)
	logs, _ := filepath.Glob(filepath.Join(c.Dir, "*", "nomad", "alloc", "*", "alloc", "logs", "*.stderr.0"))
	for _, l := range logs {
		if b := filepath.Base(l); b != "node.stderr.0" && b != "keeper.stderr.0" {
			continue
		}
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		if i := strings.Index(string(b), "SIGQUIT"); i >= 0 {
			b = b[i:]
		} else if len(b) > 8<<10 {
			b = b[len(b)-8<<10:]
		}
		if len(b) > 256<<10 {
			b = b[:256<<10]
		}
		logf("%s:\n%s", l, b)
	}
}
