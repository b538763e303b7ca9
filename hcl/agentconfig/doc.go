// Package agentconfig reads the agent config file of `saddlebag node
// -config FILE` and `saddlebag controller -config FILE`: HCL decoded with
// hashicorp/hcl/v2 and gohcl, every problem an hcl.Diagnostic at the file,
// line and column it is about, saying what would be valid (the same
// diagnostics as hcl/volspec).
//
//	name           = "n1"                  # node name (default: the host name)
//	log_level      = "info"
//	data_dir       = "/var/lib/saddlebag"   # node: where replicas live
//	bind_addr      = "0.0.0.0:7400"         # node: replica server listen address
//	advertise_addr = "10.0.0.5:7400"        # node: address other nodes dial
//	csi_endpoint   = "unix:///run/saddlebag/csi.sock"
//	lock_delay     = "5s"                   # Consul session lock-delay, 100ms to 60s
//	ttl            = "10s"                  # TTL of the agent's Consul check, at least 1s
//	labels {                                # failure-domain labels (Consul meta)
//	  rack = "r1"
//	}
//	consul {
//	  address         = "127.0.0.1:8500"
//	  token           = "..."
//	  ca_file         = "/etc/consul/ca.pem"
//	  cert_file       = "/etc/consul/client.pem"
//	  key_file        = "/etc/consul/client-key.pem"
//	  tls_server_name = "consul.example"
//	  kv_prefix       = "saddlebag/"
//	}
//	controller {                            # read by saddlebag controller only
//	  replica_grace_period = "10m"          # a replica's node gone this long gets a replacement
//	  create_timeout       = "5m"           # an interrupted create this old is removed
//	}
//
// One file type serves both commands: the node and the controller share
// name, log_level, csi_endpoint, lock_delay and consul; each ignores the
// other's settings. Config.Settings lists what the file set, so a command
// can apply each setting to its flag unless that flag was given on the
// command line (flags override the file).
//
// agentconfig imports none of Saddlebag's packages (hcl/internal/hclutil
// aside).
package agentconfig
