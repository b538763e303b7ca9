# Nomad ACL policy of the Saddlebag controller's Nomad token (NOMAD_TOKEN
# of jobs/saddlebag-controller.nomad.hcl), needed only with Nomad ACLs on.
# The active controller follows Nomad's event stream (Node and Allocation
# topics) and frees the volume claims of allocations lost on down nodes
# with the volume detach API (what `nomad volume detach` does), so that a
# failover does not wait for Nomad's claim GC.
#
#   nomad acl policy apply -description "saddlebag controller" saddlebag-controller jobs/acl/saddlebag-controller.nomad-policy.hcl
#   nomad acl token create -name saddlebag-controller -policy saddlebag-controller
namespace "*" {
  capabilities = ["read-job", "csi-list-volume", "csi-read-volume", "csi-mount-volume"]
}

node {
  policy = "read"
}

plugin {
  policy = "read"
}
