package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/e2e/cluster"
)

// uiCheck is one health check as the Consul UI shows it on a service
// instance's Health Checks tab.
type uiCheck struct {
	Name, Status, CheckID, Notes, Output string
}

// uiChecksJS reads the Health Checks tab: each check's name (its
// heading), status (the class its list item is drawn with: passing,
// warning or critical) and the CheckID, Notes and Output fields.
const uiChecksJS = `JSON.stringify([...document.querySelectorAll("li.health-check-output")].map(li => {
  const f = {};
  li.querySelectorAll("dl").forEach(dl => {
    const dt = dl.querySelector("dt"), dd = dl.querySelector("dd");
    if (dt && dd) f[dt.innerText.trim()] = dd.innerText.trim();
  });
  const h = li.querySelector("h2");
  return {Name: h ? h.innerText.trim() : "", Status: ["passing", "warning", "critical"].find(c => li.classList.contains(c)) || "",
    CheckID: f["CheckID"] || "", Notes: f["Notes"] || "", Output: f["Output"] || ""};
}))`

// TestConsulUI opens the cluster's Consul UI in headless Chromium, as an
// operator would, and finds there what Saddlebag promises: the
// saddlebag-node service with an instance on every node, each with its
// agent check passing, and on the primary's instance the volume check
// with its note and output, passing; then, after the primary's node is
// killed, the volume check warning (degraded) on the new primary's
// instance and the dead node's checks critical. Screenshots of every
// page go to $SADDLEBAG_E2E_ARTIFACTS, or to a directory the test makes
// and prints (consul_ui_screenshots DIR); they are kept.
func TestConsulUI(t *testing.T) {
	artifacts := os.Getenv("SADDLEBAG_E2E_ARTIFACTS")
	if artifacts == "" {
		var err error
		artifacts, err = os.MkdirTemp("", "saddlebag-e2e-consul-ui-")
		must.NoError(t, err)
	} else {
		artifacts = filepath.Join(artifacts, "consul-ui")
		must.NoError(t, os.MkdirAll(artifacts, 0o755))
	}
	fmt.Printf("consul_ui_screenshots %s\n", artifacts)
	b := newBrowser(t, artifacts) // first: no browser, no cluster

	c := cluster.New(t, cluster.Options{ConsulUI: true})
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	napi, err := c.Nomad()
	must.NoError(t, err)
	capi, err := c.ConsulClient()
	must.NoError(t, err)
	root, err := filepath.Abs("..")
	must.NoError(t, err)
	t.Cleanup(func() { _, _ = c.NomadCLI(context.Background(), "job", "stop", "-purge", "postgres") })

	bin, err := c.BuildSaddlebag(ctx, root)
	must.NoError(t, err)
	must.NoError(t, c.DeploySaddlebag(ctx, root, bin))
	out, err := c.NomadCLI(ctx, "volume", "create", filepath.Join("testdata", "volume-postgres.hcl"))
	must.NoError(t, err, must.Sprint(out))
	out, err = c.NomadCLI(ctx, "job", "run", "-detach", repoPath(t, "jobs/examples/postgres.nomad.hcl"))
	must.NoError(t, err, must.Sprint(out))
	a := waitRunning(t, ctx, c, napi, "postgres", "postgres")
	primary := nodeNamed(t, c, a.NodeName)
	_, err = waitQuery(ctx, primary.IP, 2*time.Minute)
	must.NoError(t, err)
	volCheck := "saddlebag-volume:" + volID
	must.NoError(t, waitCheck(ctx, capi, primary.Name, volCheck, consulapi.HealthPassing))

	ui := "http://" + c.ConsulAddr + "/ui/"
	// Log in: the UI keeps its token in local storage, as its login form
	// does. The management token, since this is the harness's cluster.
	must.NoError(t, b.do(time.Minute, chromedp.Navigate(ui)))
	_, err = eval[string](b, `localStorage.setItem("consul:token", JSON.stringify({SecretID: "`+cluster.ConsulManagementToken+`", AccessorID: ""})); "ok"`)
	must.NoError(t, err)
	shot := func(name string) {
		t.Helper()
		p, err := b.screenshot(name)
		must.NoError(t, err)
		t.Logf("screenshot %s", p)
	}
	open := func(path string) {
		t.Helper()
		must.NoError(t, b.do(time.Minute, chromedp.Navigate(ui+"dc1/"+path)))
	}
	// instances are the saddlebag-node service's instances, by node.
	instances := map[string]string{}
	entries, _, err := capi.Catalog().Service("saddlebag-node", "", (&consulapi.QueryOptions{}).WithContext(ctx))
	must.NoError(t, err)
	for _, e := range entries {
		instances[e.Node] = e.ServiceID
	}
	must.MapLen(t, len(c.Nodes), instances, must.Sprintf("instances %v", instances))

	open("services")
	_, err = b.waitText(time.Minute, nil, "saddlebag-node", "saddlebag-controller")
	must.NoError(t, err)
	shot("services")

	open("services/saddlebag-node/instances")
	var ids []string
	for _, id := range instances {
		ids = append(ids, id)
	}
	// Every check passing (on a loaded machine a node's serfHealth can
	// flap for a few seconds: the page must come to all passing).
	text, err := b.waitText(2*time.Minute, func(s string) bool {
		return strings.Count(s, "All service checks passing") == len(ids) && strings.Count(s, "All node checks passing") == len(ids)
	}, ids...)
	must.NoError(t, err, must.Sprint(text))
	shot("instances")

	// checks opens a node's instance and waits until its checks
	// satisfy ok, returning them.
	checks := func(node, shotName string, d time.Duration, ok func(map[string]uiCheck) bool) map[string]uiCheck {
		t.Helper()
		open(fmt.Sprintf("services/saddlebag-node/instances/%s/%s/health-checks", node, instances[node]))
		var got map[string]uiCheck
		deadline := time.Now().Add(d)
		loaded := time.Now()
		for {
			s, err := eval[string](b, uiChecksJS)
			if err == nil {
				var list []uiCheck
				if json.Unmarshal([]byte(s), &list) == nil {
					got = map[string]uiCheck{}
					for _, ch := range list {
						got[ch.CheckID] = ch
					}
					if ok(got) {
						break
					}
				}
			}
			if time.Now().After(deadline) {
				shot(shotName + "-timeout")
				t.Fatalf("%s's saddlebag-node instance in the Consul UI: checks never as expected; last seen %+v", node, got)
			}
			time.Sleep(time.Second)
			// The UI follows Consul with blocking queries; still, reload
			// a page that has shown the same for a while.
			if time.Since(loaded) > 20*time.Second {
				_ = b.do(30*time.Second, chromedp.Reload())
				loaded = time.Now()
			}
		}
		shot(shotName)
		return got
	}
	agentCheck := func(node string) string { return instances[node] + ":ttl" }
	for _, nd := range c.Nodes {
		got := checks(nd.Name, "instance-"+nd.Name, time.Minute, func(m map[string]uiCheck) bool {
			return m[agentCheck(nd.Name)].Status == consulapi.HealthPassing
		})
		must.Eq(t, "saddlebag-node agent alive", got[agentCheck(nd.Name)].Name)
		if nd == primary {
			continue
		}
		_, has := got[volCheck]
		must.False(t, has, must.Sprintf("%s is not the primary but shows the volume check", nd.Name))
	}
	got := checks(primary.Name, "volume-passing-"+primary.Name, time.Minute, func(m map[string]uiCheck) bool {
		return m[volCheck].Status == consulapi.HealthPassing && strings.HasPrefix(m[volCheck].Output, "healthy: ")
	})
	vc := got[volCheck]
	must.Eq(t, "saddlebag volume "+volID, vc.Name)
	must.Eq(t, "volume health reported by its primary: healthy, degraded or offline", vc.Notes)
	must.StrContains(t, vc.Output, "2 of 2", must.Sprintf("%+v", vc))
	t.Logf("volume check in the UI: %+v", vc)

	// Kill the primary's node: Postgres comes back on the other replica,
	// whose node now reports the volume degraded (one replica of two).
	other := otherReplica(t, ctx, c, capi, primary.Name)
	_, err = primary.Kill()
	must.NoError(t, err)
	_, err = waitQuery(ctx, other.IP, 2*time.Minute)
	must.NoError(t, err)
	got = checks(other.Name, "volume-warning-"+other.Name, 2*time.Minute, func(m map[string]uiCheck) bool {
		return m[volCheck].Status == consulapi.HealthWarning
	})
	vc = got[volCheck]
	must.StrHasPrefix(t, "degraded: ", vc.Output, must.Sprintf("%+v", vc))
	must.Eq(t, "volume health reported by its primary: healthy, degraded or offline", vc.Notes)
	t.Logf("volume check in the UI after the kill: %+v", vc)
	got = checks(primary.Name, "dead-"+primary.Name, 2*time.Minute, func(m map[string]uiCheck) bool {
		return m["serfHealth"].Status == consulapi.HealthCritical
	})
	// Consul keeps the last status of a dead agent's own checks: the
	// killed node's instance still lists its volume check as it last
	// was; the node's serfHealth, critical, is what marks it unhealthy.
	t.Logf("the killed node's checks in the UI: %+v", got)
	// The instance list: the dead node's node checks failing, the new
	// primary's instance with one service check (the volume's) warning.
	open("services/saddlebag-node/instances")
	text, err = b.waitText(time.Minute, nil, append(ids, "All node checks failing", "1/2 service checks with a warning")...)
	must.NoError(t, err, must.Sprint(text))
	shot("instances-after-kill")
}
