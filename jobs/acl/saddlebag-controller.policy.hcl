# Consul ACL policy for `saddlebag controller` (the job
# jobs/saddlebag-controller.nomad.hcl passes its token with --consul-token):
#
#   - its service and Connect identity: register saddlebag-controller and
#     its TTL check, fetch the saddlebag-controller leaf certificate, and
#     authorize the standbys that forward calls to it (service:write on the
#     target);
#   - Saddlebag's keys (leadership lock, volume and node records) under the
#     default --kv-prefix;
#   - sessions, and reading nodes, services (the nodes' health) and its
#     agent (the address it publishes for forwarded calls).
#
# It cannot register or impersonate saddlebag-node: the replica servers
# see it as saddlebag-controller, which intentions let create and delete
# replicas, nothing else.

service "saddlebag-controller" {
  policy = "write"
}

service_prefix "" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}

agent_prefix "" {
  policy = "read"
}

session_prefix "" {
  policy = "write"
}

key_prefix "saddlebag/" {
  policy = "write"
}
