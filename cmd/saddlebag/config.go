package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/saddlebag/saddlebag/hcl/agentconfig"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin"
)

// configFlag maps an agent config setting to a command's flag. A setting
// with no flag is ignored by that command (the file is shared by node and
// controller). env names an environment variable that, when set, wins over
// the file: Nomad sets CSI_ENDPOINT for each plugin allocation.
type configFlag struct{ flag, env string }

// nodeConfigFlags are `saddlebag node`'s flags for agentconfig.Keys.
var nodeConfigFlags = map[string]configFlag{
	"name": {flag: "node"}, "log_level": {flag: "log-level"}, "data_dir": {flag: "data-dir"},
	"bind_addr": {flag: "listen"}, "advertise_addr": {flag: "advertise"},
	"csi_endpoint": {flag: "csi-endpoint", env: plugin.EndpointEnv},
	"lock_delay":   {flag: "lock-delay"}, "ttl": {flag: "ttl"}, "labels": {flag: "label"},
	"consul.address": {flag: "consul-addr"}, "consul.token": {flag: "consul-token"},
	"consul.ca_file": {flag: "consul-ca-file"}, "consul.cert_file": {flag: "consul-client-cert"},
	"consul.key_file": {flag: "consul-client-key"}, "consul.tls_server_name": {flag: "consul-tls-server-name"},
	"consul.kv_prefix":                {flag: "kv-prefix"},
	"controller.replica_grace_period": {},
	"controller.create_timeout":       {},
}

// controllerConfigFlags are `saddlebag controller`'s flags for agentconfig.Keys.
var controllerConfigFlags = map[string]configFlag{
	"name": {flag: "name"}, "log_level": {flag: "log-level"},
	"data_dir": {}, "bind_addr": {}, "advertise_addr": {}, "labels": {},
	"csi_endpoint": {flag: "csi-endpoint", env: plugin.EndpointEnv},
	"lock_delay":   {flag: "lock-delay"}, "ttl": {flag: "ttl"},
	"consul.address": {flag: "consul-addr"}, "consul.token": {flag: "consul-token"},
	"consul.ca_file": {flag: "consul-ca-file"}, "consul.cert_file": {flag: "consul-client-cert"},
	"consul.key_file": {flag: "consul-client-key"}, "consul.tls_server_name": {flag: "consul-tls-server-name"},
	"consul.kv_prefix":                {flag: "kv-prefix"},
	"controller.replica_grace_period": {flag: "replica-grace"},
	"controller.create_timeout":       {flag: "create-timeout"},
}

// parseFlagsWithConfig is parseFlags plus -config FILE: every setting of
// the agent config file is applied to its flag unless that flag was given
// on the command line, which overrides the file. Problems in the file are
// a usage error listing each as FILE:LINE,COL: message; warnings go to
// stderr.
func parseFlagsWithConfig(fs *flag.FlagSet, args []string, mapping map[string]configFlag) error {
	path := fs.String("config", "", "agent config file (HCL, see hcl/agentconfig); flags given on the command line override it")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return nil
	}
	return applyConfig(fs, *path, mapping, os.Stderr)
}

func applyConfig(fs *flag.FlagSet, path string, mapping map[string]configFlag, stderr io.Writer) error {
	cfg, diags := agentconfig.ParseFile(path)
	if diags.HasErrors() {
		return usageError{diagsError{what: "config file", diags: diags}}
	}
	printDiags(stderr, diags)
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, s := range cfg.Settings() {
		m, known := mapping[s.Key]
		switch {
		case !known || (m.flag != "" && fs.Lookup(m.flag) == nil):
			printDiags(stderr, hcl.Diagnostics{{Severity: hcl.DiagWarning, Subject: s.Range.Ptr(),
				Summary: fmt.Sprintf("%s is not used by %s", s.Key, fs.Name())}})
			continue
		case m.flag == "" || given[m.flag]:
			continue
		case m.env != "" && os.Getenv(m.env) != "":
			printDiags(stderr, hcl.Diagnostics{{Severity: hcl.DiagWarning, Subject: s.Range.Ptr(),
				Summary: fmt.Sprintf("%s is ignored: $%s is set, and wins", s.Key, m.env)}})
			continue
		}
		for _, v := range s.Values {
			if err := fs.Set(m.flag, v); err != nil {
				return usageError{diagsError{what: "config file", diags: hcl.Diagnostics{{Severity: hcl.DiagError, Subject: s.Range.Ptr(),
					Summary: fmt.Sprintf("%s: %v", s.Key, err)}}}}
			}
		}
	}
	return nil
}

// diagsError is a file's problems: one FILE:LINE,COL: message line each.
type diagsError struct {
	what  string
	diags hcl.Diagnostics
}

func (e diagsError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "invalid %s", e.what)
	for _, d := range e.diags {
		b.WriteString("\n")
		b.WriteString(formatDiag(d))
	}
	return b.String()
}

// printDiags writes one line per diagnostic.
func printDiags(w io.Writer, diags hcl.Diagnostics) {
	for _, d := range diags {
		fmt.Fprintln(w, formatDiag(d))
	}
}

// formatDiag prints a diagnostic on one line as FILE:LINE,COL: message,
// what would be valid after a semicolon, and "warning: " before a
// warning's message.
func formatDiag(d *hcl.Diagnostic) string {
	msg := d.Summary
	if d.Detail != "" {
		msg += "; " + d.Detail
	}
	msg = strings.NewReplacer("\r\n", " ", "\n", " ", "\t", " ").Replace(msg)
	if d.Severity == hcl.DiagWarning {
		msg = "warning: " + msg
	}
	if d.Subject == nil {
		return msg
	}
	return fmt.Sprintf("%s:%d,%d: %s", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column, msg)
}

// addConsulFlags adds the Consul connection flags the node agent and the
// controller share (address, ACL token, TLS, KV prefix).
func addConsulFlags(fs *flag.FlagSet, c *leader.ConsulConfig) {
	addConsulAPIFlags(fs, c)
	fs.StringVar(&c.Prefix, "kv-prefix", leader.DefaultPrefix, "Consul KV prefix of every Saddlebag key")
}

// addConsulAPIFlags adds the flags to reach the local Consul agent, for
// commands that use it only for their Connect certificates.
func addConsulAPIFlags(fs *flag.FlagSet, c *leader.ConsulConfig) {
	fs.StringVar(&c.Address, "consul-addr", "", "Consul HTTP address (default: $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	fs.StringVar(&c.Token, "consul-token", "", "Consul ACL token (default: $CONSUL_HTTP_TOKEN)")
	fs.StringVar(&c.CAFile, "consul-ca-file", "", "CA certificate verifying Consul's HTTPS certificate (default: $CONSUL_CACERT)")
	fs.StringVar(&c.CertFile, "consul-client-cert", "", "client certificate for Consul (default: $CONSUL_CLIENT_CERT)")
	fs.StringVar(&c.KeyFile, "consul-client-key", "", "client key for Consul (default: $CONSUL_CLIENT_KEY)")
	fs.StringVar(&c.TLSServerName, "consul-tls-server-name", "", "name to verify Consul's certificate against (default: $CONSUL_TLS_SERVER_NAME)")
}
