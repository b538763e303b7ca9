// Package encrypt is encryption at rest (issue #11): Device, a
// replication.Device wrapper that encrypts every 4 KiB block with
// AES-256-XTS (tweak = block number, as dm-crypt's aes-xts-plain64 with
// 4096-byte sectors) before the Device underneath, the engine, sees it,
// so replicas, resync and anything reading a replica's data file only
// ever hold ciphertext. Requests of any alignment are served by
// read-modify-write under per-block locks; an all-zero ciphertext block
// (trimmed, never written) reads as plaintext zeros. The cipher is in
// xts.go.
//
// It sits between the engine and a frontend: the node (plugin) and the
// benchmarks wrap an encrypted volume's engine in it and hand the result
// to the FUSE frontend. Nothing in the engine or the frontends knows it
// is there.
//
// It imports replication alone of Saddlebag's packages (the Device
// interface, the block size and the errors), and no frontend
// (replication/frontend/...). replication must not import it.
package encrypt
