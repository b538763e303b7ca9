id        = "v1"
name      = "v1"
type      = "csi"
plugin_id = "saddlebag"
capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}
topology_request {
  required {
    topology { segments { rack = "r1" } segments { rack = "r2" } }
    topology { }
  }
  required {
    topology { segments { rack = "r9" } }
  }
  preferred { }
}
