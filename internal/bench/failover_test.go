package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
)

var failoverRE = regexp.MustCompile(`(?m)^storage_failover_seconds (\S+)$`)

// The failover figure runs against real Consul and real processes, through
// the CSI node plugin, and is never below lock-delay (nobody may take the
// lease sooner).
func TestFailoverFigure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the failover figure stages its volume on FUSE and a loop device: run it as root")
	}
	bin := filepath.Join(t.TempDir(), "saddlebag")
	build := exec.Command("go", "build", "-o", bin, "../../cmd/saddlebag")
	out, err := build.CombinedOutput()
	must.NoError(t, err, must.Sprint(string(out)))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var buf bytes.Buffer
	err = runFailover(ctx, &buf, Options{Dir: t.TempDir(), Binary: bin, Log: hclog.NewNullLogger()})
	t.Log(buf.String())
	must.NoError(t, err)
	m := failoverRE.FindStringSubmatch(buf.String())
	must.NotNil(t, m)
	secs, err := strconv.ParseFloat(m[1], 64)
	must.NoError(t, err)
	must.GreaterEq(t, FailoverLockDelay.Seconds(), secs)
	must.Less(t, FailoverLockDelay.Seconds()+15, secs)
}
