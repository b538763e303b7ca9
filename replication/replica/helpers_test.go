package replica

import (
	"testing"

	"github.com/hashicorp/go-hclog"
)

// testLogger returns a logger that writes to t's output, at debug level.
func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: t.Output()})
}

// epochGenBase is the lowest in-sync generation a primary at epoch
// writes (the engine's rule: the epoch in the high 32 bits).
func epochGenBase(epoch uint64) uint64 { return epoch << 32 }
