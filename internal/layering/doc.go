// Package layering enforces the import rules the packages' doc.go files
// state ("must not import ...", "imports none of Saddlebag's packages",
// "nothing imports it but cmd"). Its test reads the module's package
// graph with `go list -deps -json ./...` and fails on any import that
// breaks a rule, naming the rule's doc.go and the chain of imports that
// breaks it; `make vet` runs it. A rule changed in a doc.go is changed in
// rules (layering_test.go) in the same commit.
//
// It has no code of its own, so nothing imports it.
package layering
