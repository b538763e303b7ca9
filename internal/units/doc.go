// Package units parses and prints byte sizes the way Nomad volume specs and
// Saddlebag's flags write them: "4096", "256MiB", "10GiB", "1GB", "1.5 TiB".
// Binary suffixes (KiB, MiB, GiB, TiB, PiB) are powers of 1024, decimal ones
// (kB, KB, MB, GB, TB, PB) powers of 1000, a bare number is bytes.
//
// It imports nothing of Saddlebag's, so every package may use it.
package units
