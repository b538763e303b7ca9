// Package volspec reads Saddlebag volume spec files: the files users write
// for `nomad volume create` (DESIGN.md §4), decoded with hashicorp/hcl/v2
// and gohcl so that every problem is an hcl.Diagnostic pointing at the
// file, line and column it is about, and says what would be valid.
//
// The schema is Nomad's CSI volume specification: id, name, namespace,
// type, plugin_id, capacity_min/capacity_max, capability blocks,
// mount_options, topology_request (required/preferred, each with topology
// blocks of segments), secrets, parameters, snapshot_id and clone_id.
// Values are read the way Nomad reads them: capacities with go-humanize
// ("10GiB" is 10×2^30 bytes, "10GB" and "10G" are 10×10^9), numbers and
// bools in parameters and secrets as the strings Nomad sends ("2", "1").
// Two differences from Nomad, whose CLI uses HCL 1: a one-line block with
// quoted or several keys (segments { "rack" = "R1", "zone" = "a" }) must
// be written as an attribute, segments = { "rack" = "R1", "zone" = "a" },
// which both read; and unknown arguments are errors here where Nomad
// silently drops them.
//
// On top of Nomad's own rules (id, name, plugin_id, type = "csi" and a
// capability are required; snapshot_id and clone_id exclude each other)
// it checks what Saddlebag can serve: single-node access modes, a size
// range holding a whole number of 4 KiB blocks, ext4 or xfs (xfs at least
// 300 MiB), and Saddlebag's parameters (replicas, fs_type, spread,
// min_in_sync, encrypted; encrypted = true and the encryption_passphrase
// secret need each other, and no message quotes the secret).
// ParseParams checks those parameters alone, for the CSI plugin's
// CreateVolume, with a typed *ParamsError; EncryptionProblem checks the
// encryption settings against the secrets.
//
// volspec imports none of Saddlebag's packages (hcl/internal/hclutil
// aside), so the plugin and the CLI can both use it.
package volspec
