package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/testcluster"
)

// jobFiles are every Nomad job file the project ships.
func jobFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, pat := range []string{"jobs/*.nomad.hcl", "jobs/docker/*.nomad.hcl", "jobs/examples/*.nomad.hcl"} {
		m, err := filepath.Glob(filepath.Join("..", pat))
		must.NoError(t, err)
		files = append(files, m...)
	}
	return files
}

// validate runs `nomad job validate` without an agent (NOMAD_ADDR points
// at a closed loopback port, so Nomad validates locally: syntax, HCL2
// variables and functions, and the job's structure; driver options need
// a client and are checked where the tests run the jobs).
func validate(t *testing.T, bin, file string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, append(append([]string{"job", "validate"}, args...), file)...)
	cmd.Env = append(os.Environ(), "NOMAD_ADDR=http://127.0.0.1:1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestJobFilesValidate(t *testing.T) {
	bin, err := testcluster.NomadBinary()
	must.NoError(t, err)
	files := jobFiles(t)
	for _, want := range []string{"saddlebag-node.nomad.hcl", "saddlebag-controller.nomad.hcl", "docker/saddlebag-keeper.nomad.hcl", "docker/saddlebag-node.nomad.hcl", "docker/saddlebag-controller.nomad.hcl", "examples/postgres.nomad.hcl"} {
		found := false
		for _, f := range files {
			found = found || strings.HasSuffix(f, "jobs/"+want)
		}
		must.True(t, found, must.Sprintf("jobs/%s missing from %v", want, files))
	}
	for _, f := range files {
		t.Run(strings.TrimPrefix(f, "../"), func(t *testing.T) {
			out, err := validate(t, bin, f)
			must.NoError(t, err, must.Sprint(out))
			must.StrContains(t, out, "Job validation successful")
		})
	}
	t.Run("postgres without a volume", func(t *testing.T) {
		out, err := validate(t, bin, filepath.Join("..", "jobs", "examples", "postgres.nomad.hcl"), "-var", "volume=")
		must.NoError(t, err, must.Sprint(out))
	})
}

// TestJobValidateCatchesBrokenFiles makes sure the validation above can
// fail: a job file with a syntax error, an unknown variable, or an
// invalid job is refused.
func TestJobValidateCatchesBrokenFiles(t *testing.T) {
	bin, err := testcluster.NomadBinary()
	must.NoError(t, err)
	good, err := os.ReadFile(filepath.Join("..", "jobs", "saddlebag-node.nomad.hcl"))
	must.NoError(t, err)
	broken := map[string]string{
		"syntax":           strings.Replace(string(good), `type        = "system"`, `type        = "system`, 1),
		"unknown variable": strings.Replace(string(good), "var.binary", "var.no_such_variable", 1),
		"bad job type":     strings.Replace(string(good), `type        = "system"`, `type        = "cron"`, 1),
	}
	for name, body := range broken {
		t.Run(name, func(t *testing.T) {
			must.NotEq(t, string(good), body, must.Sprint("the edit did not apply; the test would prove nothing"))
			f := filepath.Join(t.TempDir(), "job.nomad.hcl")
			must.NoError(t, os.WriteFile(f, []byte(body), 0o644))
			out, err := validate(t, bin, f)
			must.Error(t, err, must.Sprint(out))
		})
	}
}
