# Example 1 of Nomad v1.11.3 website/content/docs/other-specifications/volume/mount_options.mdx, verbatim below this header.
id           = "ebs_prod_db1"
namespace    = "default"
name         = "database"
type         = "csi"
plugin_id    = "ebs-prod"
capacity_max = "200G"
capacity_min = "100G"

mount_options {
  fs_type     = "ext4"
  mount_flags = ["noatime"]
}
