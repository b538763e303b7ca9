// Package layering enforces the import rules the packages' doc.go files
// state ("must not import ...", "imports none of Saddlebag's packages",
// "nothing imports it but cmd"). Its test reads the module's package
// graph with `go list -deps -json ./...` and fails on any import that
// breaks a rule, naming the rule's doc.go and the chain of imports that
// breaks it; `make vet` runs it. A rule changed in a doc.go is changed in
// rules (layering_test.go) in the same commit.
//
// It also checks that the repository refers only to documents it holds:
// every reference to a section of docs/architecture.md names a section
// that exists, and nothing points at a design or style document outside
// the repository (docrefs_test.go).
//
// It has no code of its own, so nothing imports it.
package layering
