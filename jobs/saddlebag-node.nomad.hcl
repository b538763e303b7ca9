# Saddlebag node agent and CSI node plugin: one per Nomad client (a system
# job). Each instance serves this host's replicas, registers the host in
# Consul, holds the primary leases of the volumes staged here, and serves
# CSI node RPCs (stage, publish, unstage) to the Nomad client.
#
# Run jobs/saddlebag-keeper.nomad.hcl first: with it, staged volumes
# survive a restart, crash or upgrade of this task (README "Restarts and
# upgrades without I/O errors"); without it they are unstaged when this
# task stops.
#
# raw_exec form: the saddlebag binary is installed on every host (the
# end-to-end tests and `make dev` run this file). The client needs
#   plugin "raw_exec" { config { enabled = true } }
# For the docker form see docker/saddlebag-node.nomad.hcl.
#
#   nomad job run saddlebag-node.nomad.hcl
#   nomad job run -var 'nomad_data_dir=/var/lib/nomad' saddlebag-node.nomad.hcl

variable "datacenters" {
  description = "Datacenters to run in."
  type        = list(string)
  default     = ["*"]
}

variable "binary" {
  description = "Path of the saddlebag binary on every host."
  type        = string
  default     = "/usr/local/bin/saddlebag"
}

variable "plugin_id" {
  description = "CSI plugin ID; volume specs name it in plugin_id."
  type        = string
  default     = "saddlebag"
}

variable "consul_addr" {
  description = "HTTP address of the Consul agent on each host."
  type        = string
  default     = "127.0.0.1:8500"
}

variable "consul_token" {
  description = "Consul ACL token of the nodes, holding the policy jobs/acl/saddlebag-node.policy.hcl (empty: Consul without ACLs). It reaches the task as CONSUL_HTTP_TOKEN; anyone who may read this job sees it, so in production prefer a Nomad Variable rendered by a template."
  type        = string
  default     = ""
}

variable "data_dir" {
  description = "Where each host keeps its replicas. Runtime interpolation such as $${node.unique.name} is allowed."
  type        = string
  default     = "/var/lib/saddlebag"
}

variable "run_dir" {
  description = "Where staged volumes keep their FUSE files and checkpoints (cleared on reboot is fine)."
  type        = string
  default     = "/run/saddlebag"
}

variable "nomad_data_dir" {
  description = <<-EOT
    The Nomad client's data_dir on each host. Under raw_exec the plugin
    translates the paths Nomad passes (under stage_publish_base_dir,
    /local/csi) to <nomad_data_dir>/client/csi/node/<plugin_id> on the
    host. Runtime interpolation such as $${node.unique.name} is allowed.
  EOT
  type        = string
  default     = "/opt/nomad/data"
}

variable "replica_port" {
  description = "TCP port of each host's replica server (static: other hosts dial it)."
  type        = number
  default     = 7400
}

variable "log_level" {
  type    = string
  default = "info"
}

variable "extra_args" {
  description = "More saddlebag node flags, e.g. [\"--label\", \"rack=r1\", \"--lock-delay\", \"5s\"]."
  type        = list(string)
  default     = []
}

job "saddlebag-node" {
  datacenters = var.datacenters
  type        = "system"

  group "node" {
    # Come back at once after a crash: the volumes staged here wait for
    # this process (their I/O is held in the kernel, see the keeper job).
    restart {
      attempts = 10
      interval = "5m"
      delay    = "1s"
      mode     = "delay"
    }

    network {
      port "replica" {
        static = var.replica_port
      }
    }

    task "node" {
      driver = "raw_exec"

      # Its Consul token (see var.consul_token); TLS needs nothing more:
      # the process fetches its Connect certificate from the local agent.
      env {
        CONSUL_HTTP_TOKEN = var.consul_token
      }

      config {
        command = var.binary
        args = concat([
          "node",
          "--node", "${node.unique.name}",
          "--data-dir", var.data_dir,
          "--listen", "${NOMAD_ADDR_replica}",
          "--consul-addr", var.consul_addr,
          "--csi-state-dir", "${var.run_dir}/csi-${node.unique.name}",
          "--host-csi-dir", "${var.nomad_data_dir}/client/csi/node/${var.plugin_id}",
          "--log-level", var.log_level,
          # Staged volumes are parked in the descriptor keeper
          # (saddlebag-keeper.nomad.hcl): a restart, crash or upgrade of
          # this task leaves their I/O waiting, not failing.
          "--keeper-socket", "${var.run_dir}/keeper.sock",
        ], var.extra_args)
      }

      csi_plugin {
        id        = var.plugin_id
        type      = "node"
        mount_dir = "/csi"
      }

      # Time to hand the volumes over (or, without a keeper, unmount
      # them) and release leases cleanly on a stop.
      kill_timeout = "30s"

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
