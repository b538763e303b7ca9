# Example 2 of Nomad v1.11.3 website/content/docs/other-specifications/volume/topology_request.mdx, verbatim below this header.
topology_request {
  required {
    topology { segments { rack = "R1", zone = "us-east-1a" } }
    topology { segments { rack = "R2", zone = "us-east-1a" } }
  }
  preferred {
    topology { segments { rack = "R1", zone = "us-east-1a"} }
  }
}
