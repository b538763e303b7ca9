# Example 1 of Nomad v1.11.3 website/content/docs/other-specifications/volume/capability.mdx, verbatim below this header.
id           = "ebs_prod_db1"
namespace    = "default"
name         = "database"
type         = "csi"
plugin_id    = "ebs-prod"
capacity_max = "200G"
capacity_min = "100G"

capability {
  access_mode     = "single-node-reader-only"
  attachment_mode = "file-system"
}
