package main

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/shoenig/test/must"
)

const nodeConfig = `name           = "n1"
data_dir       = "/var/lib/sb"
bind_addr      = "127.0.0.1:7400"
advertise_addr = "10.0.0.5:7400"
lock_delay     = "7s"
ttl            = "3s"
log_level      = "debug"

labels {
  rack = "r1"
  zone = "a"
}

consul {
  address   = "127.0.0.1:8501"
  token     = "t0k"
  kv_prefix = "sb/"
}

controller {
  replica_grace_period = "42s"
  create_timeout       = "3m"
}
`

// `saddlebag node -config FILE` takes every setting from the file, and a
// flag given on the command line wins over it.
func TestNodeConfigFile(t *testing.T) {
	t.Setenv("CSI_ENDPOINT", "")
	path := writeFile(t, "agent.hcl", nodeConfig)

	f, err := parseNodeFlags([]string{"-config", path})
	must.NoError(t, err)
	must.Eq(t, "n1", f.node)
	must.Eq(t, "/var/lib/sb", f.dataDir)
	must.Eq(t, "127.0.0.1:7400", f.listen)
	must.Eq(t, "10.0.0.5:7400", f.advertise)
	must.Eq(t, 7*time.Second, f.lockDelay)
	must.Eq(t, 3*time.Second, f.ttl)
	must.Eq(t, "debug", f.logLevel)
	must.Eq(t, stringList{"rack=r1", "zone=a"}, f.labels)
	must.Eq(t, "127.0.0.1:8501", f.consul.Address)
	must.Eq(t, "t0k", f.consul.Token)
	must.Eq(t, "sb/", f.consul.Prefix)

	f, err = parseNodeFlags([]string{"--lock-delay", "2s", "-config", path, "--label", "rack=r9", "--data-dir", "/other"})
	must.NoError(t, err)
	must.Eq(t, 2*time.Second, f.lockDelay)
	must.Eq(t, stringList{"rack=r9"}, f.labels) // the command line's labels replace the file's
	must.Eq(t, "/other", f.dataDir)
	must.Eq(t, "127.0.0.1:7400", f.listen) // not on the command line: from the file

	// Without -config nothing changes: flag defaults stay.
	f, err = parseNodeFlags([]string{"--data-dir", "/d", "--listen", "127.0.0.1:0"})
	must.NoError(t, err)
	must.Eq(t, 5*time.Second, f.lockDelay)
}

// A bad config file is a usage error naming each problem at its line.
func TestNodeConfigFileProblems(t *testing.T) {
	path := writeFile(t, "agent.hcl", "data_dir = \"/d\"\nlock_delay = \"5 s\"\nbind_addr = \"nowhere\"\n")
	_, err := parseNodeFlags([]string{"-config", path})
	var ue usageError
	must.True(t, errors.As(err, &ue))
	must.Eq(t, "invalid config file\n"+
		path+`:2,14: lock_delay "5 s" is not a duration; write a number with a unit, like "5s", "500ms" or "10m"`+"\n"+
		path+`:3,13: bind_addr "nowhere" is not a host:port address with a port from 0 to 65535, like "10.0.0.5:7400"`, err.Error())

	_, stderr, code := runSaddlebag(t, "", "node", "-config", path)
	must.Eq(t, 2, code)
	must.StrHasPrefix(t, "saddlebag node: invalid config file\n"+path+":2,14: ", stderr)
}

// The controller reads the same file: the shared settings and its own
// block, ignoring the node's settings.
func TestControllerConfigFile(t *testing.T) {
	t.Setenv("CSI_ENDPOINT", "")
	path := writeFile(t, "agent.hcl", nodeConfig+"csi_endpoint = \"unix:///run/sb/csi.sock\"\n")
	f, err := parseControllerFlags([]string{"-config", path})
	must.NoError(t, err)
	must.Eq(t, "n1", f.name)
	must.Eq(t, 42*time.Second, f.grace)
	must.Eq(t, 3*time.Minute, f.createTimeout)
	must.Eq(t, 7*time.Second, f.lockDelay)
	must.Eq(t, "unix:///run/sb/csi.sock", f.endpoint)
	must.Eq(t, "t0k", f.consul.Token)
}

// Nomad sets CSI_ENDPOINT for the plugin allocation: it wins over the
// file's csi_endpoint, with a warning; a setting the command has no flag
// for is a warning too.
func TestConfigWarnings(t *testing.T) {
	path := writeFile(t, "agent.hcl", "csi_endpoint = \"unix:///a.sock\"\nttl = \"5s\"\n")

	t.Setenv("CSI_ENDPOINT", "unix:///from-nomad.sock")
	fs := newFlagSet("test")
	endpoint := fs.String("csi-endpoint", "unix:///from-nomad.sock", "")
	must.NoError(t, fs.Parse(nil))
	var stderr bytes.Buffer
	must.NoError(t, applyConfig(fs, path, nodeConfigFlags, &stderr))
	must.Eq(t, "unix:///from-nomad.sock", *endpoint)
	must.Eq(t, path+":1,16: warning: csi_endpoint is ignored: $CSI_ENDPOINT is set, and wins\n"+
		path+":2,7: warning: ttl is not used by saddlebag test\n", stderr.String())
}

// A node or controller name that could not be one key segment is refused
// at start: it names the node record, the session and the CSI node id.
func TestNamesCheckedAtStart(t *testing.T) {
	t.Setenv("CSI_ENDPOINT", "")
	for _, bad := range []string{"../n2", "n1/x", "a..b", "n\x001", ".n"} {
		_, err := parseNodeFlags([]string{"--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--node", bad})
		must.ErrorContains(t, err, "--node")
		_, err = parseControllerFlags([]string{"--csi-endpoint", "unix:///run/sb/c.sock", "--name", bad})
		must.ErrorContains(t, err, "--name")
	}
	_, err := parseControllerFlags([]string{"--csi-endpoint", "unix:///run/sb/c.sock", "--name", "c-1.example"})
	must.NoError(t, err)
}
