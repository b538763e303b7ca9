package agentconfig

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// FuzzParseAgentConfig: no input panics, a nil Config always comes with
// an error and a Config never does, and every setting of a valid Config
// is a known key with a value. Seeds: the full config above, the example,
// and testdata/fuzz/FuzzParseAgentConfig.
func FuzzParseAgentConfig(f *testing.F) {
	f.Add("agent.hcl", []byte(full))
	if src, err := os.ReadFile("../../jobs/examples/agent.hcl"); err == nil {
		f.Add("agent.hcl", src)
	}
	f.Add("agent.json", []byte(`{"labels": {"rack": "r1"}, "consul": [{"address": "c"}], "ttl": "1s"}`))
	f.Fuzz(func(t *testing.T, name string, src []byte) {
		if filepath.Ext(name) != ".json" {
			name = "agent.hcl"
		}
		c, diags := Parse(name, src)
		if c == nil && !diags.HasErrors() {
			t.Fatalf("nil Config without an error: %v", diags)
		}
		if c != nil && diags.HasErrors() {
			t.Fatalf("a Config with errors: %v", diags)
		}
		if c == nil {
			return
		}
		for _, s := range c.Settings() {
			if !slices.Contains(Keys, s.Key) || (len(s.Values) == 0 && s.Key != "labels") {
				t.Fatalf("setting %+v", s)
			}
		}
		if c.LockDelay != 0 && (c.LockDelay < MinLockDelay || c.LockDelay > MaxLockDelay) {
			t.Fatalf("lock_delay %s out of bounds", c.LockDelay)
		}
	})
}
