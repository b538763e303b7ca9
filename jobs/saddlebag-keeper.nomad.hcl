# Saddlebag descriptor keeper: one per Nomad client (a system job), run
# beside saddlebag-node. It holds a duplicate of each staged volume's
# /dev/fuse descriptor (and, in memory only, what the next node process
# needs to serve it again), so that a restart, crash or upgrade of the
# saddlebag-node task leaves the volumes' I/O waiting in the kernel
# instead of failing; the next node process takes them back. See README
# "Restarts and upgrades without I/O errors".
#
# Deliberately tiny and rarely changed: upgrading it does not touch any
# volume while saddlebag-node runs (the node deposits its descriptors
# again within seconds). Run it before saddlebag-node:
#
#   nomad job run saddlebag-keeper.nomad.hcl
#
# It also frees a saddlebag-node process killed while a thread of it waits
# on its own FUSE file (it would linger forever as a zombie, and Nomad
# never start the next one) by aborting that node's FUSE connections
# after --stuck-node-grace (default 5s); see README "Limits, plainly".
#
# raw_exec, like saddlebag-node (the saddlebag binary on every host).

variable "datacenters" {
  description = "Datacenters to run in."
  type        = list(string)
  default     = ["*"]
}

variable "binary" {
  description = "Path of the saddlebag binary on every host (its keeper command changes rarely; it need not follow node upgrades)."
  type        = string
  default     = "/usr/local/bin/saddlebag"
}

variable "run_dir" {
  description = "The run_dir of saddlebag-node: the keeper's socket is <run_dir>/keeper.sock."
  type        = string
  default     = "/run/saddlebag"
}

job "saddlebag-keeper" {
  datacenters = var.datacenters
  type        = "system"

  group "keeper" {
    # Come back at once: while saddlebag-node is also down, the keeper is
    # all that keeps the volumes alive.
    restart {
      attempts = 10
      interval = "5m"
      delay    = "1s"
      mode     = "delay"
    }

    task "keeper" {
      driver = "raw_exec"

      config {
        command = var.binary
        args    = ["keeper", "--socket", "${var.run_dir}/keeper.sock"]
      }

      kill_timeout = "5s"

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
