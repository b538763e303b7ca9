# The end-to-end tests' copy of jobs/examples/volume-postgres.hcl, at 512 MiB.
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
}
