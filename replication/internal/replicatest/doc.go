// Package replicatest is what the tests of the packages built on
// replication (the frontends, the encryption) need and replication's own
// tests keep for themselves: in-process replica servers on loopback
// ports, engines over them, an in-memory Device that records how it was
// called, and a logger that writes through testing.T.
//
// It is for tests only: no production package imports it. It imports
// only replication and replication/replica (the replica servers) of
// Saddlebag's packages. replication's own tests
// cannot use it (they are inside the package it imports) and keep their
// helpers in replication/helpers_test.go.
package replicatest
