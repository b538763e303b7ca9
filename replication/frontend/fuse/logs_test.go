package fuse

import (
	"bytes"
	"log"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

// go-fuse's messages reach the process's log at warn level, but for the
// EOF a relayed connection's reader gets when the relay stops.
func TestGoFuseLogs(t *testing.T) {
	var out bytes.Buffer
	lg := hclog.New(&hclog.LoggerOptions{Output: &out, Level: hclog.Info})
	w, flags := log.Writer(), log.Flags()
	t.Cleanup(func() { log.SetOutput(w); log.SetFlags(flags) })
	RouteStdLog(lg)
	log.Printf("Short read for input header: %v", []byte{})
	must.EqOp(t, "", out.String())
	log.Printf("Short read for input header: %v", []byte{1, 2})
	log.Println("can't convert error type:", "x")
	must.StrContains(t, out.String(), "[WARN]  Short read for input header: [1 2]")
	must.StrContains(t, out.String(), "[WARN]  can't convert error type: x")

	out.Reset()
	var stopping atomic.Bool
	rl := relayLogger(log.New(lg.StandardWriter(&hclog.StandardLoggerOptions{ForceLevel: hclog.Warn}), "", 0), &stopping)
	rl.Printf("Failed to read from fuse conn: %v", "invalid argument")
	must.StrContains(t, out.String(), "Failed to read from fuse conn", must.Sprint("a read error while the relay runs is a warning"))
	out.Reset()
	stopping.Store(true)
	rl.Printf("Failed to read from fuse conn: %v", "invalid argument")
	must.EqOp(t, "", out.String())
}
