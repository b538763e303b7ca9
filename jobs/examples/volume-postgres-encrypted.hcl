# The Postgres volume of volume-postgres.hcl, encrypted at rest: the
# primary encrypts every 4 KiB block (AES-256-XTS) before it is
# replicated, so the replicas, resync and anything reading a replica's
# data file only see ciphertext. The data key is random, sealed under a
# key derived from the passphrase below (argon2id); Nomad passes the
# secret to the plugin at create and at every stage. Keep this file out
# of version control once the passphrase is real: losing the passphrase
# loses the data, and anyone holding it and a replica can read the data.
#
#   saddlebag volume validate volume-postgres-encrypted.hcl
#   nomad volume create volume-postgres-encrypted.hcl

id        = "postgres-encrypted"
name      = "postgres-encrypted"
type      = "csi"
plugin_id = "saddlebag"

capacity_min = "20GiB"
capacity_max = "20GiB"

capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}

mount_options {
  fs_type     = "ext4"
  mount_flags = ["noatime"]
}

parameters {
  replicas  = 2
  fs_type   = "ext4"
  spread    = "rack"
  encrypted = true # needs secrets.encryption_passphrase
}

secrets {
  encryption_passphrase = "replace with a long random passphrase"
}
