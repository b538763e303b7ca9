# Consul ACL policy for `saddlebag node` (the job jobs/saddlebag-node.nomad.hcl
# passes its token with --consul-token). Least privilege for what the node
# agent does (see README "Security" and leader/):
#
#   - its service, checks and Connect identity: register saddlebag-node and
#     its TTL and per-volume health checks, fetch the saddlebag-node leaf
#     certificate, and ask its agent whether a peer may reach it
#     (/v1/agent/connect/authorize needs service:write on the target);
#   - Saddlebag's keys: its node record, volume records, primary locks, the
#     in-sync record and epoch floor, all under the default --kv-prefix;
#   - sessions on its own Consul node (any node: the policy is shared by
#     every host), and reading sessions to take over from a dead predecessor;
#   - reading nodes, services and its agent (its address, health).

service "saddlebag-node" {
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
