package volspec

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/hashicorp/hcl/hcl/ast"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/saddlebag/saddlebag/hcl/internal/hclutil"
)

// A job file or an agent config given as a volume spec would otherwise
// get a list of unknown settings; lookAlike recognises them from their
// top-level names so that the file gets one line saying what it looks like.

var (
	// Top-level settings only a Saddlebag agent config has.
	saddlebagAgentKeys = []string{"csi_endpoint", "advertise_addr", "lock_delay", "ttl", "labels", "controller"}
	// Top-level settings of a Consul agent config that a Nomad one lacks.
	consulAgentKeys = []string{"node_name", "bootstrap_expect", "bootstrap", "ui_config", "ui", "retry_join", "retry_join_wan",
		"connect", "performance", "primary_datacenter", "recursors", "dns_config", "auto_encrypt", "start_join"}
	// Top-level settings of a Nomad agent config.
	nomadAgentKeys = []string{"server", "client", "data_dir", "datacenter", "region", "bind_addr", "advertise", "ports",
		"addresses", "acl", "telemetry", "plugin", "plugin_dir", "vault", "consul", "tls", "leave_on_interrupt",
		"leave_on_terminate", "disable_update_check", "enable_debug", "log_level", "log_file", "autopilot"}
	// Settings that make a file a volume spec, however wrong otherwise.
	specKeys = []string{"id", "type", "plugin_id", "capability", "capacity_min", "capacity_max", "mount_options", "topology_request"}
)

// lookAlike says what the file looks like when it is a Nomad job file or
// an agent config (Nomad's, Consul's, Saddlebag's) rather than a volume
// spec, "" otherwise. list is the file as HCL 1 read it, nil when HCL 1
// could not (job files often use HCL 2's expressions), in which case the
// top-level names come from HCL 2.
func lookAlike(filename string, src []byte, list *ast.ObjectList) string {
	type top struct{ name, label string }
	var tops []top
	if list != nil {
		for _, it := range list.Items {
			t := top{name: itemKey(it)}
			if len(it.Keys) > 1 {
				t.label, _ = it.Keys[1].Token.Value().(string)
			}
			tops = append(tops, t)
		}
	} else {
		f, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
		if diags.HasErrors() {
			return ""
		}
		body, ok := f.Body.(*hclsyntax.Body)
		if !ok {
			return ""
		}
		for name := range body.Attributes {
			tops = append(tops, top{name: name})
		}
		for _, b := range body.Blocks {
			t := top{name: b.Type}
			if len(b.Labels) > 0 {
				t.label = b.Labels[0]
			}
			tops = append(tops, t)
		}
	}
	has := func(keys []string) bool {
		return slices.ContainsFunc(tops, func(t top) bool { return slices.Contains(keys, t.name) })
	}
	for _, t := range tops {
		if t.name == "job" {
			return fmt.Sprintf("a Nomad job file (job %s), not a volume spec: run it with nomad job run", strconv.Quote(t.label))
		}
	}
	switch {
	case has(specKeys):
		return ""
	case has(saddlebagAgentKeys):
		return "a Saddlebag agent config, not a volume spec: give it to saddlebag node -config or saddlebag controller -config"
	case has(consulAgentKeys):
		return "a Consul agent config, not a volume spec"
	case has(nomadAgentKeys):
		return "a Nomad agent config, not a volume spec"
	}
	return ""
}

func notASpec(at hcl.Range, kind string) *hcl.Diagnostic {
	return hclutil.Error(at, "this file looks like "+kind, "")
}
