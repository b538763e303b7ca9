id        = "v1"
name      = "v1"
type      = "csi"
plugin_id = "saddlebag"
capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}
parameters {
  replicas = 3
  encrypted = false
}
parameters {
  min_in_sync = 2.0
  flag = true
}
secrets {
  n = 0x10
}
