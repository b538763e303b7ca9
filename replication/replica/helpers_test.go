package replica

import (
	"testing"

	"github.com/hashicorp/go-hclog"
)

// testLogger returns a logger that writes through t.
func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: tWriter{t}})
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// epochGenBase is the lowest in-sync generation a primary at epoch
// writes (the engine's rule: the epoch in the high 32 bits).
func epochGenBase(epoch uint64) uint64 { return epoch << 32 }
