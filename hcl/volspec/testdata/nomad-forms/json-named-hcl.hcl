{
  "id": "v1", "name": "v1", "type": "csi", "plugin_id": "saddlebag",
  "capacity_min": "1GiB",
  "capability": [{"access_mode": "single-node-writer", "attachment_mode": "file-system"}],
  "parameters": {"replicas": 3},
  "topology_request": {"required": [{"topology": [{"segments": {"rack": "r1"}}]}]}
}
