ID        = "v1"
Name      = "v1"
Type      = "CSI"
Plugin_ID = "saddlebag"
Capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}
Parameters {
  Replicas = 3
}
