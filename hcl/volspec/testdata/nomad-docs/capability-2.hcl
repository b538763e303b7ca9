# Example 2 of Nomad v1.11.3 website/content/docs/other-specifications/volume/capability.mdx, verbatim below this header.
capability {
  access_mode     = "single-node-reader-only"
  attachment_mode = "file-system"
}

capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}
