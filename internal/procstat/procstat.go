// Package procstat reads what Saddlebag needs of /proc/<pid>/stat: a
// process's (or one thread's) state and its start time, which with the
// pid identifies a process for good (a reused pid has another). The
// descriptor keeper (internal/fdkeeper) tells a node process stuck
// exiting by them, and the end-to-end harness (e2e/cluster) tells its
// own processes from reused pids and finds threads waiting in D state.
//
// It imports none of Saddlebag's packages, so that both the product and
// the test harness may use it; internal/layering enforces it.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Stat is what is read of a stat file.
type Stat struct {
	// State is field 3: R, S, D, Z, T, ...
	State byte
	// StartTime is field 22: when the process started, in clock ticks
	// after boot.
	StartTime uint64
}

// Parse reads the contents of a stat file. The command name (field 2,
// in parentheses) may hold spaces and parentheses itself, so the fields
// are counted from the last ')'.
func Parse(b []byte) (Stat, error) {
	var st Stat
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return st, fmt.Errorf("malformed stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field 22 (starttime) is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return st, fmt.Errorf("malformed stat: %d fields after the command name", len(f))
	}
	st.State = f[0][0]
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return st, fmt.Errorf("malformed stat: start time: %w", err)
	}
	st.StartTime = start
	return st, nil
}

// Read reads /proc/<pid>/stat; an error that wraps os.ErrNotExist means
// the process is gone (reaped).
func Read(pid int) (Stat, error) {
	return read(fmt.Sprintf("/proc/%d/stat", pid))
}

// ReadTask reads the stat file of thread tid of process pid.
func ReadTask(pid, tid int) (Stat, error) {
	return read(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
}

func read(path string) (Stat, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Stat{}, err
	}
	st, err := Parse(b)
	if err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// Tasks returns the ids of process pid's threads, in order.
func Tasks(pid int) ([]int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, tid)
		}
	}
	sort.Ints(out)
	return out, nil
}
