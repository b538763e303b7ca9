package replication

import "golang.org/x/sys/unix"

type unixStat struct{ blocks int64 }

func statBlocks(path string, st *unixStat) error {
	var s unix.Stat_t
	if err := unix.Stat(path, &s); err != nil {
		return err
	}
	st.blocks = s.Blocks
	return nil
}
