# The end-to-end tests' copy of jobs/examples/volume-postgres.hcl, at 512 MiB,
# and encrypted at rest as jobs/examples/volume-postgres-encrypted.hcl is:
# every scenario of TestSaddlebag runs on an encrypted volume.
#
#   saddlebag volume validate volume-postgres.hcl
#   nomad volume create volume-postgres.hcl     (or: saddlebag volume create volume-postgres.hcl)
#
# A job claims it with:
#   volume "data" {
#     type            = "csi"
#     source          = "postgres"
#     access_mode     = "single-node-writer"
#     attachment_mode = "file-system"
#   }

id        = "postgres"
name      = "postgres"
type      = "csi"
plugin_id = "saddlebag"

capacity_min = "512MiB"
capacity_max = "512MiB"

capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}

mount_options {
  fs_type     = "ext4"
  mount_flags = ["noatime"]
}

parameters {
  replicas    = 2      # copies on distinct nodes, 1 to 5
  fs_type     = "ext4" # ext4 or xfs
  spread      = "rack" # node label whose values the replicas are spread across
  min_in_sync = 1      # writes block when fewer replicas than this hold every write
  encrypted   = true   # AES-256-XTS before replication; needs the secret below
}

secrets {
  encryption_passphrase = "e2e passphrase, not a secret in a test"
}
