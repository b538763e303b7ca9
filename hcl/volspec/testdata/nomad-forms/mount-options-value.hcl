id        = "v1"
name      = "v1"
type      = "csi"
plugin_id = "saddlebag"
capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}
mount_options = "ext4"
