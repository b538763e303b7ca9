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

variable "count" {
  type    = number
  default = 2
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

      config {
        image        = "${var.image}:${var.version}"
        network_mode = "host"
        args = concat([
          "controller",
          "--name", "${node.unique.name}",
          "--consul-addr", var.consul_addr,
          "--log-level", var.log_level,
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
