id        = "v1"
name      = "v1"
type      = "csi"
plugin_id = "saddlebag"
capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}
id = "v2"
mount_options {
  fs_type = "xfs"
}
mount_options {
  fs_type = "ext4"
}
