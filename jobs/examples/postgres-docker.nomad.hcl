# Postgres on a Saddlebag volume under the docker driver: the docker form
# of postgres.nomad.hcl, the same volume, port and password. Run it with
#
#   nomad job run jobs/examples/postgres-docker.nomad.hcl
#
# The image must carry Debian's postgresql 15 server (its binaries under
# /usr/lib/postgresql/15/bin), /bin/sh, coreutils and setpriv, and a
# postgres user; Debian's or any image built FROM debian:bookworm with
# `apt-get install postgresql-15` does. The end-to-end test imports such
# an image made from the host's own packages (e2e/docker_test.go).

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "volume" {
  description = "Saddlebag volume ID (from the volume spec)."
  type        = string
  default     = "postgres"
}

variable "image" {
  description = "An image with Debian's postgresql 15 server (see the top of this file)."
  type        = string
  default     = "saddlebag-postgres:15"
}

variable "postgres_bin" {
  type    = string
  default = "/usr/lib/postgresql/15/bin"
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

job "postgres" {
  datacenters = var.datacenters
  type        = "service"

  group "db" {
    network {
      port "db" {
        static = var.port
      }
    }

    volume "data" {
      type            = "csi"
      source          = var.volume
      access_mode     = "single-node-writer"
      attachment_mode = "file-system"
    }

    restart {
      attempts = 1
      delay    = "2s"
      mode     = "fail"
    }

    reschedule {
      delay          = "5s"
      delay_function = "constant"
      unlimited      = true
    }

    task "postgres" {
      driver = "docker"

      volume_mount {
        volume      = "data"
        destination = "/srv/data"
      }

      template {
        destination = "secrets/pwfile"
        perms       = "0600"
        data        = var.password
      }

      # As in the exec form: the volume's root is handed to postgres once,
      # initdb runs into a scratch directory renamed into place when
      # complete, and the server runs as postgres (setpriv) with every
      # commit fsynced to every in-sync replica. The container runs as
      # root only for the chown; network_mode host puts the server on the
      # node's address like the exec form.
      config {
        image        = var.image
        network_mode = "host"
        command      = "/bin/sh"
        args = ["-c", <<-EOT
          set -e
          mkdir -p /srv/data
          chown postgres:postgres /srv/data
          chmod 0700 /srv/data
          chown postgres /local ${NOMAD_SECRETS_DIR}/pwfile
          PGDATA=/srv/data/pgdata
          AS_PG="setpriv --reuid=postgres --regid=postgres --clear-groups --inh-caps=-all --bounding-set=-all --"
          if [ ! -s "$PGDATA/PG_VERSION" ]; then
            rm -rf "$PGDATA.init"
            $AS_PG ${var.postgres_bin}/initdb -D "$PGDATA.init" --username=postgres \
              --pwfile=${NOMAD_SECRETS_DIR}/pwfile --auth-local=trust \
              --auth-host=scram-sha-256 --no-locale --encoding=UTF8
            echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA.init/pg_hba.conf"
            sync
            mv "$PGDATA.init" "$PGDATA"
          fi
          exec $AS_PG ${var.postgres_bin}/postgres -D "$PGDATA" \
            -c listen_addresses=${NOMAD_IP_db} -c port=${NOMAD_PORT_db} \
            -c unix_socket_directories=/local
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
