// Package volspec reads Saddlebag volume spec files: the files users write
// for `nomad volume create`, read exactly as Nomad's CLI
// reads them (nomad.go): HCL 1 (github.com/hashicorp/hcl, Nomad's pinned
// fork), JSON when the first non-space character is "{", the settings
// weakly decoded into Nomad's api.CSIVolume and the capability,
// mount_options and topology_request blocks decoded one by one as Nomad
// does. Every problem is an hcl.Diagnostic (HCL 2's type, shared with
// hcl/agentconfig) pointing at the file, line and column it is about, and
// says what would be valid.
//
// The schema is Nomad's CSI volume specification: id, name, namespace,
// type, plugin_id, capacity_min/capacity_max, capability blocks,
// mount_options, topology_request (required/preferred, each with topology
// blocks of segments), secrets, parameters, snapshot_id and clone_id.
// Values are what Nomad sends: capacities parsed with go-humanize,
// through internal/units ("10GiB" is 10×2^30 bytes, "10GB" and "10G" are
// 10×10^9), numbers and bools in parameters and secrets as strings ("2",
// true as "1"). Saddlebag's own whole-number parameters (replicas,
// min_in_sync) must be written in plain digits and encrypted as a bool:
// replicas = true, 02, 2.0 or 1e0 and encrypted = 1 are errors here,
// although the strings Nomad makes of them would pass. Every form Nomad's
// documentation writes is read, the one-line
// topology { segments { "rack" = "R1", "zone" = "a" } } included. What
// Nomad refuses is an error; what Nomad reads and ignores (an unknown
// top-level argument, external_id and context, a repeated setting, a
// second mount_options block, a topology without segments) is a warning,
// so every file Nomad accepts validates unless Saddlebag cannot serve it.
// A job file or an agent config gets one error saying what it looks like
// (lookalike.go).
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
