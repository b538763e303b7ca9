# Agent config for `saddlebag node -config agent.hcl` (and, for the shared
# settings and the controller block, `saddlebag controller -config`).
# Flags given on the command line override what is set here.

name           = "n1"
data_dir       = "/var/lib/saddlebag"
bind_addr      = "0.0.0.0:7400"
advertise_addr = "10.0.0.5:7400"
lock_delay     = "5s"
ttl            = "10s"
log_level      = "info"

labels {
  rack = "r1"
  zone = "eu-west-1a"
}

consul {
  address   = "127.0.0.1:8500"
  kv_prefix = "saddlebag/"
}

controller {
  replica_grace_period = "10m"
}
