id        = "v1"
name      = "v1"
type      = "csi"
plugin_id = "saddlebag"
Capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}
capability "x" {
  access_mode = "multi-node-multi-writer"
}
