# Saddlebag descriptor keeper, docker form: one per Nomad client (a
# system job), run beside docker/saddlebag-node.nomad.hcl, before it:
#
#   nomad job run docker/saddlebag-keeper.nomad.hcl
#   nomad job run docker/saddlebag-node.nomad.hcl
#
# What it does is the raw_exec form's (../saddlebag-keeper.nomad.hcl):
# it holds a duplicate of each staged volume's /dev/fuse descriptor, so
# that a restart, crash or upgrade of the saddlebag-node container leaves
# the volumes' I/O waiting in the kernel instead of unstaging them; the
# next node container takes them back. It also frees a node process
# stuck dying (README "Restarts, crashes and upgrades of Saddlebag
# itself", "Limits, plainly"). Build the image with jobs/docker/Dockerfile.
#
# What has to cross the boundary between the two containers, and why the
# settings below:
#
# - The socket. Both containers bind-mount run_dir at the same path; the
#   keeper listens on <run_dir>/keeper.sock, the node job passes
#   --keeper-socket with that path. Descriptors passed over it
#   (SCM_RIGHTS) are open files, which cross containers unchanged.
#   rslave: the node's FUSE mounts under run_dir (made in the node's
#   container, propagated to the host) are mirrored here, and so are
#   their unmounts; with docker's default, rprivate, a keeper started
#   while volumes are staged would keep copies of their mounts after the
#   node unmounted them.
# - The node's pid. The keeper watches each node process by the pid the
#   socket's peer credentials (SO_PEERCRED) give, which the kernel
#   translates into the keeper's pid namespace: 0 when the node is not in
#   it or below it. pid_mode = "host" puts the keeper in the host's,
#   where every container's processes are visible, and gives it the
#   host's /proc, from which it reads the node's state, threads and
#   mounts (/proc/<pid>/stat, status, task/<tid>/mountinfo). The node
#   container needs no pid_mode of its own for this. Without it the
#   keeper still keeps descriptors (restarts work), but logs at error
#   "its pid is not visible in the keeper's pid namespace" and could
#   never free a stuck node.
# - fusectl. To free a stuck node it writes to
#   /sys/fs/fuse/connections/<N>/abort, mounting fusectl there first (a
#   container's /sys has none); that needs CAP_SYS_ADMIN and a writable
#   /sys: privileged = true. Without it the keeper logs at error at start
#   "FUSE connections cannot be aborted from here".
#
# The clients' docker plugin must allow privileged containers and bind
# mounts (see docker/saddlebag-node.nomad.hcl).

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  description = "The saddlebag image (its keeper command changes rarely; it need not follow node upgrades)."
  type        = string
  default     = "saddlebag"
}

variable "version" {
  description = "Image tag."
  type        = string
  default     = "dev"
}

variable "run_dir" {
  description = "The run_dir of docker/saddlebag-node.nomad.hcl (bind-mounted at the same path): the keeper's socket is <run_dir>/keeper.sock. It must exist on every host, on a shared mount."
  type        = string
  default     = "/run/saddlebag"
}

variable "log_level" {
  type    = string
  default = "info"
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
      driver = "docker"

      config {
        image = "${var.image}:${var.version}"
        args  = ["keeper", "--socket", "${var.run_dir}/keeper.sock", "--log-level", var.log_level]

        # The node processes' pids and /proc, and fusectl (see above).
        pid_mode   = "host"
        privileged = true
        # It needs no network (a unix socket only), but one of its own
        # would make it the one Saddlebag process of a host outside the
        # host's network namespace (the end-to-end harness, which
        # simulates hosts by network namespace, kills a host's processes
        # by it).
        network_mode = "host"

        mount {
          type     = "bind"
          source   = var.run_dir
          target   = var.run_dir
          readonly = false
          bind_options {
            propagation = "rslave"
          }
        }
      }

      kill_timeout = "5s"

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
