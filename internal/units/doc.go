// Package units parses and prints byte sizes, with one meaning for each
// unit everywhere in Saddlebag: Nomad's. Nomad reads a volume spec's
// capacity_min and capacity_max with go-humanize's ParseBytes, so that is
// what ParseBytes is, for the spec checks (hcl/volspec) and for every
// size flag of the CLI (engine --size, --resync-rate, bench's sizes)
// alike:
//
//   - a bare number is bytes: "4096";
//   - binary suffixes are powers of 1024: "Ki"/"KiB", "Mi"/"MiB",
//     "Gi"/"GiB", "Ti"/"TiB", "Pi"/"PiB", "Ei"/"EiB" ("10GiB" is 10×2^30);
//   - decimal suffixes and single letters are powers of 1000: "k"/"kB",
//     "M"/"MB", "G"/"GB", "T"/"TB", ... ("10G" and "10GB" are 10×10^9);
//   - case does not matter, a space may separate number and unit, and the
//     number may have a fraction ("1.5GiB") or commas ("1,000"); a
//     fraction of a byte is dropped, as Nomad drops it.
//
// FormatBytes prints a size in a form ParseBytes reads back exactly.
//
// It imports nothing of Saddlebag's, so every package may use it.
package units
