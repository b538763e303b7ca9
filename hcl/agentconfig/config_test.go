package agentconfig

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/shoenig/test/must"
)

const full = `name           = "n1"
log_level      = "debug"
data_dir       = "/var/lib/saddlebag"
bind_addr      = "0.0.0.0:7400"
advertise_addr = "10.0.0.5:7400"
csi_endpoint   = "unix:///run/saddlebag/csi.sock"
lock_delay     = "5s"
ttl            = "10s"

labels {
  rack = "r1"
  zone = "a"
}

consul {
  address         = "127.0.0.1:8500"
  token           = "secret"
  ca_file         = "/etc/consul/ca.pem"
  cert_file       = "/etc/consul/client.pem"
  key_file        = "/etc/consul/client-key.pem"
  tls_server_name = "consul.example"
  kv_prefix       = "sb/"
}

controller {
  replica_grace_period = "10m"
  create_timeout       = "7m"
}
`

func TestParseFullConfig(t *testing.T) {
	t.Parallel()
	c, diags := Parse("agent.hcl", []byte(full))
	must.SliceEmpty(t, diags)
	must.Eq(t, &Config{
		Name: "n1", LogLevel: "debug", DataDir: "/var/lib/saddlebag", BindAddr: "0.0.0.0:7400",
		AdvertiseAddr: "10.0.0.5:7400", CSIEndpoint: "unix:///run/saddlebag/csi.sock",
		LockDelay: 5 * time.Second, TTL: 10 * time.Second,
		Labels: map[string]string{"rack": "r1", "zone": "a"},
		Consul: Consul{
			Address: "127.0.0.1:8500", Token: "secret", CAFile: "/etc/consul/ca.pem",
			CertFile: "/etc/consul/client.pem", KeyFile: "/etc/consul/client-key.pem",
			TLSServerName: "consul.example", KVPrefix: "sb/",
		},
		Controller: Controller{ReplicaGracePeriod: 10 * time.Minute, CreateTimeout: 7 * time.Minute},
		settings:   c.settings,
	}, c)

	var keys []string
	for _, s := range c.Settings() {
		keys = append(keys, s.Key)
	}
	must.Eq(t, Keys, keys) // every key set, in Keys order
	s := c.Settings()
	must.Eq(t, []string{"5s"}, s[6].Values)
	must.Eq(t, 7, s[6].Range.Start.Line)
	must.Eq(t, []string{"rack=r1", "zone=a"}, s[8].Values)
	must.Eq(t, 10, s[8].Range.Start.Line)
}

// Only what the file sets is a setting; nothing is defaulted here (the
// command's flag defaults stay in force).
func TestSettingsOnlyWhatIsSet(t *testing.T) {
	t.Parallel()
	c, diags := Parse("agent.hcl", []byte("data_dir = \"/d\"\nconsul {\n  address = \"c:8500\"\n}\n"))
	must.SliceEmpty(t, diags)
	must.Eq(t, []Setting{
		{Key: "data_dir", Values: []string{"/d"}, Range: c.Settings()[0].Range},
		{Key: "consul.address", Values: []string{"c:8500"}, Range: c.Settings()[1].Range},
	}, c.Settings())
	must.Eq(t, time.Duration(0), c.LockDelay)
	must.Nil(t, c.Labels)
}

func TestProblemsPointAtTheirPosition(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		from, to  string
		line, col int
		summary   string
	}{
		{"syntax error", `ttl            = "10s"`, `ttl            = = "10s"`, 8, 18, "Invalid expression"},
		{"unknown argument", `ttl            = "10s"`, `tll            = "10s"`, 8, 1, `Unsupported argument; An argument named "tll" is not expected here. Did you mean "ttl"?`},
		{"bad lock_delay", `lock_delay     = "5s"`, `lock_delay     = "5 seconds"`, 7, 18, `lock_delay "5 seconds" is not a duration`},
		{"lock_delay too long", `lock_delay     = "5s"`, `lock_delay     = "2m"`, 7, 18, "lock_delay must be at most 1m0s"},
		{"lock_delay too short", `lock_delay     = "5s"`, `lock_delay     = "10ms"`, 7, 18, "lock_delay must be at least 100ms"},
		{"ttl too short", `ttl            = "10s"`, `ttl            = "0s"`, 8, 18, "ttl must be at least 1s"},
		{"bind_addr without port", `"0.0.0.0:7400"`, `"0.0.0.0"`, 4, 18, `bind_addr "0.0.0.0" is not a host:port address`},
		{"advertise port 0", `"10.0.0.5:7400"`, `"10.0.0.5:0"`, 5, 18, `advertise_addr "10.0.0.5:0" is not a host:port address with a port from 1 to 65535`},
		{"log level", `"debug"`, `"verbose"`, 2, 18, "log_level must be trace, debug, info, warn or error"},
		{"empty data_dir", `"/var/lib/saddlebag"`, `""`, 3, 18, "data_dir is empty"},
		{"csi endpoint", `"unix:///run/saddlebag/csi.sock"`, `"csi.sock"`, 6, 18, "csi_endpoint \"csi.sock\" must be unix:///path/to/csi.sock"},
		{"bad label name", `  zone = "a"`, `  consul-zone = "a"`, 12, 3, `label "consul-zone" is not a valid label name`},
		{"label not a string", `  zone = "a"`, `  zone = ["a"]`, 12, 10, "value must be a string, number or bool"},
		{"nested block in labels", `  zone = "a"`, "  zone {\n  }", 12, 3, `Unexpected "zone" block`},
		{"kv prefix", `"sb/"`, `"/sb"`, 22, 21, `consul.kv_prefix must not start with "/"`},
		{"cert without key", `  key_file        = "/etc/consul/client-key.pem"` + "\n", ``, 15, 1, "consul has only one of cert_file and key_file"},
		{"grace period", `"10m"`, `"soon"`, 26, 26, `controller.replica_grace_period "soon" is not a duration`},
		{"duplicate consul", "controller {", "consul {\n}\ncontroller {", 25, 1, "Duplicate consul block"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			must.StrContains(t, full, c.from)
			src := strings.Replace(full, c.from, c.to, 1)
			cfg, diags := Parse("agent.hcl", []byte(src))
			must.Nil(t, cfg)
			must.Len(t, 1, diags, must.Sprintf("%v", diags))
			d := diags[0]
			must.Eq(t, hcl.DiagError, d.Severity)
			must.Eq(t, "agent.hcl", d.Subject.Filename)
			must.Eq(t, c.line, d.Subject.Start.Line, must.Sprintf("%s", d.Error()))
			must.Eq(t, c.col, d.Subject.Start.Column, must.Sprintf("%s", d.Error()))
			must.StrContains(t, d.Summary+"; "+d.Detail, c.summary)
		})
	}
}

func TestEveryProblemReported(t *testing.T) {
	t.Parallel()
	src := strings.NewReplacer(`"5s"`, `"5x"`, `"debug"`, `"loud"`, `"sb/"`, `"//"`).Replace(full)
	_, diags := Parse("agent.hcl", []byte(src))
	must.Len(t, 3, diags, must.Sprintf("%v", diags))
	must.Eq(t, []int{2, 7, 22}, []int{diags[0].Subject.Start.Line, diags[1].Subject.Start.Line, diags[2].Subject.Start.Line})
}

func TestJSONConfig(t *testing.T) {
	t.Parallel()
	c, diags := Parse("agent.json", []byte(`{"data_dir": "/d", "labels": {"rack": "r1"}, "consul": {"address": "c:8500"}, "lock_delay": "2s"}`))
	must.SliceEmpty(t, diags)
	must.Eq(t, map[string]string{"rack": "r1"}, c.Labels)
	must.Eq(t, 2*time.Second, c.LockDelay)
}

func TestParseFileMissing(t *testing.T) {
	t.Parallel()
	c, diags := ParseFile(filepath.Join(t.TempDir(), "nope.hcl"))
	must.Nil(t, c)
	must.StrContains(t, diags.Error(), "cannot read config file")
}

// The example config shipped in jobs/examples is valid.
func TestExampleConfig(t *testing.T) {
	t.Parallel()
	c, diags := ParseFile("../../jobs/examples/agent.hcl")
	must.SliceEmpty(t, diags)
	must.NotEq(t, "", c.DataDir)
}
