# Saddlebag node agent and CSI node plugin, docker form (privileged): one
# per Nomad client. Build the image with jobs/docker/Dockerfile. The
# clients' docker plugin must allow privileged containers:
#   plugin "docker" { config { allow_privileged = true } }
#
# data_dir and run_dir must exist on every host (docker refuses to
# bind-mount a missing path), and Nomad's CSI directory must be on a
# shared mount (it is on a systemd host, where / is shared; elsewhere:
# mount --make-rshared /). TestDockerForms in e2e runs this job.
#
# Nomad mounts the host's CSI directory at stage_publish_base_dir
# (/local/csi) inside the container with bidirectional propagation, so the
# paths it passes need no translation here.
#
# Run docker/saddlebag-keeper.nomad.hcl first: with it, staged volumes
# survive a restart, crash or upgrade of this task (README "Restarts,
# crashes and upgrades of Saddlebag itself"); without it they are
# unstaged when this task stops. Why that works across containers: the
# FUSE mounts a node container makes under run_dir and the file systems
# it mounts under Nomad's CSI directory propagate to the host (rshared,
# bidirectional), so they outlive the container's mount namespace; the
# FUSE connection under them lives as long as the keeper holds its
# descriptor; the next container sees those mounts through the same bind
# mounts and takes the descriptors back from the keeper's socket in
# run_dir. This container needs no pid_mode = "host": the keeper, in the
# host's pid namespace, sees its processes whatever namespace they are in.

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  description = "The saddlebag image."
  type        = string
  default     = "saddlebag"
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
  description = "HTTP address of the Consul agent on each host (the container uses the host's network)."
  type        = string
  default     = "127.0.0.1:8500"
}

variable "consul_token" {
  description = "Consul ACL token of the nodes, holding the policy jobs/acl/saddlebag-node.policy.hcl (empty: Consul without ACLs). It reaches the task as CONSUL_HTTP_TOKEN; anyone who may read this job sees it, so in production prefer a Nomad Variable rendered by a template."
  type        = string
  default     = ""
}

variable "data_dir" {
  description = "Where each host keeps its replicas (bind-mounted at the same path)."
  type        = string
  default     = "/var/lib/saddlebag"
}

variable "run_dir" {
  description = "Where staged volumes keep their FUSE files and checkpoints (bind-mounted at the same path)."
  type        = string
  default     = "/run/saddlebag"
}

variable "replica_port" {
  type    = number
  default = 7400
}

variable "log_level" {
  type    = string
  default = "info"
}

variable "extra_args" {
  type    = list(string)
  default = []
}

job "saddlebag-node" {
  datacenters = var.datacenters
  type        = "system"

  group "node" {
    # Come back at once after a crash: the volumes staged here wait for
    # this container (their I/O is held in the kernel, see the keeper
    # job), not Nomad's default 15 s for system jobs.
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
      driver = "docker"

      # Its Consul token (see var.consul_token); TLS needs nothing more:
      # the process fetches its Connect certificate from the local agent.
      env {
        CONSUL_HTTP_TOKEN = var.consul_token
      }

      config {
        image        = "${var.image}:${var.version}"
        privileged   = true
        network_mode = "host"
        args = concat([
          "node",
          "--node", "${node.unique.name}",
          "--data-dir", var.data_dir,
          "--listen", "${NOMAD_ADDR_replica}",
          "--consul-addr", var.consul_addr,
          "--csi-state-dir", "${var.run_dir}/csi-${node.unique.name}",
          "--log-level", var.log_level,
          # Staged volumes are parked in the descriptor keeper
          # (saddlebag-keeper.nomad.hcl here), whose container
          # bind-mounts the same run_dir: a restart, crash or upgrade of
          # this task leaves their I/O waiting, not failing.
          "--keeper-socket", "${var.run_dir}/keeper.sock",
        ], var.extra_args)

        # No /dev mount here: Nomad bind-mounts the host's /dev into
        # every CSI plugin task itself (a second one is refused by docker
        # with "Duplicate mount point: /dev"); the loop devices Saddlebag
        # attaches appear there.
        mount {
          type     = "bind"
          source   = var.data_dir
          target   = var.data_dir
          readonly = false
        }
        mount {
          type     = "bind"
          source   = var.run_dir
          target   = var.run_dir
          readonly = false
          bind_options {
            propagation = "rshared"
          }
        }
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
