# Consul ACL policy for the operator's one-time `saddlebag setup-intentions`:
# write the service-intentions config entries of saddlebag-node and
# saddlebag-controller (and read the services, which Consul requires of a
# service rule), nothing else.

service "saddlebag-node" {
  policy     = "read"
  intentions = "write"
}

service "saddlebag-controller" {
  policy     = "read"
  intentions = "write"
}
