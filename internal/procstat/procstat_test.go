package procstat

import (
	"os"
	"testing"

	"github.com/shoenig/test/must"
)

// The command name may hold spaces and parentheses: the fields are read
// after the last ')'.
func TestParse(t *testing.T) {
	line := "4242 (a) b) (c d) D 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 10000 200 18446744073709551615\n"
	st, err := Parse([]byte(line))
	must.NoError(t, err)
	must.Eq(t, Stat{State: 'D', StartTime: 987654}, st)

	for _, bad := range []string{"", "4242 no parenthesis R 1", "4242 (x) R 1 2 3", "4242 (x) R 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 notanumber 1"} {
		_, err := Parse([]byte(bad))
		must.Error(t, err, must.Sprintf("%q", bad))
	}
}

// This process: running or sleeping, started after boot, its threads
// readable too; a pid that does not exist is os.ErrNotExist.
func TestRead(t *testing.T) {
	st, err := Read(os.Getpid())
	must.NoError(t, err)
	must.Positive(t, st.StartTime)
	must.SliceContains(t, []byte("RS"), st.State)

	tids, err := Tasks(os.Getpid())
	must.NoError(t, err)
	must.SliceContains(t, tids, os.Getpid())
	tst, err := ReadTask(os.Getpid(), os.Getpid())
	must.NoError(t, err)
	must.Eq(t, st.StartTime, tst.StartTime)

	_, err = Read(1 << 30)
	must.ErrorIs(t, err, os.ErrNotExist)
}
