# Postgres on a Saddlebag volume, with Debian's postgresql package
# installed on the hosts (apt-get install postgresql) and the exec driver
# (a task that mounts a CSI volume needs a driver with mount support:
# exec or docker, not raw_exec).
#
#   nomad volume create volume-postgres.hcl
#   nomad job run postgres.nomad.hcl
#   psql -h <node address> -U postgres        (password: var.password)
#
# When the node under it dies, Nomad reschedules the task onto a node
# that holds an in-sync replica and the same database comes back there.
#
# Without Saddlebag (to try the job on its own): -var volume= keeps the
# data in the allocation's directory instead, which dies with the
# allocation.

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "volume" {
  description = "Saddlebag volume ID (from the volume spec); empty: no volume, data in the allocation directory."
  type        = string
  default     = "postgres"
}

variable "postgres_bin" {
  description = "Where Debian's postgresql package puts the server binaries."
  type        = string
  default     = "/usr/lib/postgresql/15/bin"
}

variable "port" {
  type    = number
  default = 5432
}

variable "password" {
  description = "Password of the postgres role for TCP connections (the demo's; set your own)."
  type        = string
  default     = "saddlebag"
}

locals {
  # Inside the exec driver's chroot: the volume's mount point, or the
  # allocation directory shared by the group's tasks.
  data = var.volume != "" ? "/srv/data" : "/alloc/data"
}

job "postgres" {
  datacenters = var.datacenters
  type        = "service"

  group "db" {
    network {
      port "db" {
        static = var.port
      }
    }

    dynamic "volume" {
      for_each = var.volume != "" ? [var.volume] : []
      labels   = ["data"]
      content {
        type            = "csi"
        source          = volume.value
        access_mode     = "single-node-writer"
        attachment_mode = "file-system"
      }
    }

    # Go straight to another node when the task fails, rather than
    # retrying on a node that may be the problem.
    restart {
      attempts = 1
      delay    = "2s"
      mode     = "fail"
    }

    # Retry a failed placement within seconds, not Nomad's 30s-and-doubling
    # default for service jobs: right after a node dies, the replacement's
    # first claim of the volume can fail while Nomad is still releasing the
    # dead allocation's claim ("volume is currently unschedulable").
    reschedule {
      delay          = "5s"
      delay_function = "constant"
      unlimited      = true
    }

    task "postgres" {
      driver = "exec"
      user   = "postgres"

      dynamic "volume_mount" {
        for_each = var.volume != "" ? ["data"] : []
        content {
          volume      = "data"
          destination = local.data
        }
      }

      template {
        destination = "secrets/pwfile"
        perms       = "0600"
        data        = var.password
      }

      # The data directory belongs to postgres: a volume's file system
      # root is root's when it is first made. The task runs as postgres
      # (Nomad refuses exec tasks as root by default) with one capability,
      # CAP_CHOWN, used once to hand the volume's root over and dropped
      # (setpriv) before Postgres starts. One task instead of a prestart
      # task plus the server saves a chroot build, ~8 s, on every start
      # and failover.
      #
      # initdb runs once, into a scratch directory renamed into place when
      # complete, so a crash during initdb never leaves a half-made
      # cluster that looks real. Every commit is fsynced (Postgres's
      # default), so a committed row is on every in-sync replica.
      config {
        command = "/bin/sh"
        cap_add = ["chown"]
        args = ["-c", <<-EOT
          set -e
          mkdir -p ${local.data}
          chown postgres:postgres ${local.data}
          chmod 0700 ${local.data}
          PGDATA=${local.data}/pgdata
          if [ ! -s "$PGDATA/PG_VERSION" ]; then
            rm -rf "$PGDATA.init"
            ${var.postgres_bin}/initdb -D "$PGDATA.init" --username=postgres \
              --pwfile=${NOMAD_SECRETS_DIR}/pwfile --auth-local=trust \
              --auth-host=scram-sha-256 --no-locale --encoding=UTF8
            echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA.init/pg_hba.conf"
            sync
            mv "$PGDATA.init" "$PGDATA"
          fi
          exec setpriv --inh-caps=-all --ambient-caps=-all -- \
            ${var.postgres_bin}/postgres -D "$PGDATA" \
            -c listen_addresses=${NOMAD_IP_db} -c port=${NOMAD_PORT_db} \
            -c unix_socket_directories=${NOMAD_TASK_DIR}
        EOT
        ]
      }

      service {
        name     = "postgres"
        port     = "db"
        provider = "consul"

        check {
          type     = "tcp"
          interval = "2s"
          timeout  = "1s"
        }
      }

      kill_timeout = "20s"

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
