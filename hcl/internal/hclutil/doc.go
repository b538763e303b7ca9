// Package hclutil holds the small pieces hcl/volspec and hcl/agentconfig
// share: reading a block of free-form string attributes (parameters,
// secrets, labels) with the range of each, turning a value into the string
// Nomad would send, label-key rules, "did you mean" suggestions, and
// ordering diagnostics by position.
//
// It imports none of Saddlebag's packages, and only hcl/ may import it.
package hclutil
