# Example 1 of Nomad v1.11.3 website/content/docs/other-specifications/volume/topology_request.mdx, verbatim below this header.
id           = "ebs_prod_db1"
namespace    = "default"
name         = "database"
type         = "csi"
plugin_id    = "ebs-prod"
capacity_max = "200G"
capacity_min = "100G"

topology_request {
  required {
    topology { segments { rack = "R2" } }
    topology { segments { rack = "R1", zone = "us-east-1a"} }
  }
  preferred {
    topology { segments { rack = "R1", zone = "us-east-1a"} }
  }
}
