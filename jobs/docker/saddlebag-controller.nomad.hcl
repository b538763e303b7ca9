# Saddlebag CSI controller, docker form: two instances on distinct hosts,
# one active through a Consul lock. Build the image with
# jobs/docker/Dockerfile. The controller mounts nothing; it needs no
# privileges, only the host's network to reach Consul and the replica
# servers.

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  type    = string
  default = "saddlebag"
}

variable "version" {
  description = "Image tag."
  type        = string
  default     = "dev"
}

variable "plugin_id" {
  type    = string
  default = "saddlebag"
}

variable "consul_addr" {
  type    = string
  default = "127.0.0.1:8500"
}

variable "consul_token" {
  description = "Consul ACL token of the controllers, holding the policy jobs/acl/saddlebag-controller.policy.hcl (empty: Consul without ACLs). It reaches the task as CONSUL_HTTP_TOKEN; anyone who may read this job sees it, so in production prefer a Nomad Variable rendered by a template."
  type        = string
  default     = ""
}

variable "count" {
  type    = number
  default = 2
}

variable "forward_port" {
  description = "Static port on which each controller serves the mutating CSI calls its standby peers forward to it while it is active (plain gRPC on the node's address, no TLS: keep it on a network only the controller hosts reach)."
  type        = number
  default     = 7410
}

variable "log_level" {
  type    = string
  default = "info"
}

variable "extra_args" {
  type    = list(string)
  default = []
}

job "saddlebag-controller" {
  datacenters = var.datacenters
  type        = "service"

  group "controller" {
    count = var.count

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    task "controller" {
      driver = "docker"

      # Its Consul token (see var.consul_token); TLS needs nothing more:
      # the process fetches its Connect certificate from the local agent.
      env {
        CONSUL_HTTP_TOKEN = var.consul_token
      }

      config {
        image        = "${var.image}:${var.version}"
        network_mode = "host"
        args = concat([
          "controller",
          "--name", "${node.unique.name}",
          "--consul-addr", var.consul_addr,
          "--log-level", var.log_level,
          # Nomad sends controller RPCs to one instance and does not retry
          # another on Unavailable: a standby forwards them to the active
          # instance at the address it publishes in the leadership lock.
          "--forward-addr", "${attr.unique.network.ip-address}:${var.forward_port}",
        ], var.extra_args)
      }

      csi_plugin {
        id        = var.plugin_id
        type      = "controller"
        mount_dir = "/csi"
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }
}
