id        = "v1"
name      = "v1"
type      = "csi"
plugin_id = "saddlebag"
capability {
  Access_Mode     = "single-node-writer"
  attachment_mode = "file-system"
}
