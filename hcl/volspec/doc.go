// Package volspec reads Saddlebag volume spec files: the files users write
// for `nomad volume create`, decoded with hashicorp/hcl/v2
// and gohcl so that every problem is an hcl.Diagnostic pointing at the
// file, line and column it is about, and says what would be valid.
//
// The schema is Nomad's CSI volume specification: id, name, namespace,
// type, plugin_id, capacity_min/capacity_max, capability blocks,
// mount_options, topology_request (required/preferred, each with topology
// blocks of segments), secrets, parameters, snapshot_id and clone_id.
// Values are read the way Nomad reads them: capacities with go-humanize,
// through internal/units ("10GiB" is 10×2^30 bytes, "10GB" and "10G" are
// 10×10^9), numbers and bools in parameters and secrets as the strings
// Nomad sends ("2", "1"). Saddlebag's own whole-number parameters
// (replicas, min_in_sync) must be written in plain digits and encrypted
// as a bool: replicas = true, 02, 2.0 or 1e0 and encrypted = 1 are errors
// here, although the strings Nomad makes of them would pass.
// Two differences from Nomad, whose CLI uses HCL 1: a one-line block with
// quoted or several keys (segments { "rack" = "R1", "zone" = "a" }) must
// be written as an attribute, segments = { "rack" = "R1", "zone" = "a" },
// which both read; and unknown arguments are errors here where Nomad
// silently drops them.
//
// On top of Nomad's own rules (id, name, plugin_id, type = "csi" and a
// capability are required; snapshot_id and clone_id exclude each other)
// it checks what Saddlebag can serve: single-node access modes, a size
// range holding a whole number of 4 KiB blocks, ext4 or xfs, a size the
// file system fits in (ext4 at least 8 MiB, xfs at least 300 MiB, when a
// capability mounts one), and Saddlebag's parameters (replicas, fs_type, spread,
// min_in_sync, encrypted; encrypted = true and the encryption_passphrase
// secret need each other, and no message quotes the secret).
// ParseParams checks those parameters alone, for the CSI plugin's
// CreateVolume, with a typed *ParamsError; EncryptionProblem checks the
// encryption settings against the secrets; Size picks a volume's size
// from its capacity range and checks it against the file system, the one
// rule of the spec checks, CreateVolume, and (through FitsFS) `saddlebag
// engine --mount` and the node's stage, with a typed *SizeError.
//
// volspec must not import Saddlebag's packages other than
// hcl/internal/hclutil and internal/units, so the plugin, the node side
// and the CLI can all use it.
package volspec
