# A 3-replica raw block volume (no file system), placed only on nodes in
# zone "a" or "b", preferring rack r1.

id           = "redis-aof"
name         = "redis-aof"
type         = "csi"
plugin_id    = "saddlebag"
capacity_min = "1GiB"
capacity_max = "2GiB"

capability {
  access_mode     = "single-node-writer"
  attachment_mode = "block-device"
}

topology_request {
  required {
    topology {
      segments {
        zone = "a"
      }
    }
    topology { segments = { "zone" = "b" } }
  }
  preferred {
    topology { segments = { "rack" = "r1", "zone" = "a" } }
  }
}

parameters {
  replicas    = 3
  min_in_sync = 2
}
