package cluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/testcluster"
)

// TestNomadConfigsParse checks the rendered agent configurations with
// Nomad's own parser (`nomad config validate`), and that the settings
// that keep the agents from probing outside are in them.
func TestNomadConfigsParse(t *testing.T) {
	bin, err := testcluster.NomadBinary()
	must.NoError(t, err)
	dir := t.TempDir()
	files := map[string]string{
		"server.hcl": nomadServerHCL("198.18.9.1", filepath.Join(dir, "s"), "198.18.9.1:8500", DefaultTiming),
		"client.hcl": nomadClientHCL("node1", "198.18.9.2", filepath.Join(dir, "c"), "198.18.9.1:4647", "198.18.9.2:8500", "sbe2e9-node1", ""),
		"docker-client.hcl": nomadClientHCL("node1", "198.18.9.2", filepath.Join(dir, "c"), "198.18.9.1:4647", "198.18.9.2:8500", "sbe2e9-node1",
			"unix:///var/tmp/saddlebag-e2e/9/node1/docker/docker.sock"),
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		must.NoError(t, os.WriteFile(p, []byte(body), 0o644))
		out, err := exec.Command(bin, "config", "validate", p).CombinedOutput()
		must.NoError(t, err, must.Sprintf("%s\n%s", out, body))
		must.StrContains(t, body, "disable_update_check = true")
	}
	must.StrContains(t, files["client.hcl"], `"fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"`)
	must.StrContains(t, files["client.hcl"], `address = "198.18.9.2:8500"`)
	must.StrContains(t, files["server.hcl"], `heartbeat_grace               = "3s"`)
	must.StrContains(t, files["client.hcl"], `"driver.denylist"      = "docker,`)
	must.StrNotContains(t, files["client.hcl"], `plugin "docker"`)
	// The docker form: the driver on, against the node's own dockerd.
	must.StrNotContains(t, files["docker-client.hcl"], `"docker,`)
	must.StrContains(t, files["docker-client.hcl"], `endpoint         = "unix:///var/tmp/saddlebag-e2e/9/node1/docker/docker.sock"`)
	must.StrContains(t, files["docker-client.hcl"], `allow_privileged = true`)
}
