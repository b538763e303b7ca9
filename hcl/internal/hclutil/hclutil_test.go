package hclutil

import (
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/shoenig/test/must"
)

func TestSuggest(t *testing.T) {
	t.Parallel()
	must.Eq(t, "replicas", Suggest("replica", []string{"replicas", "spread"}))
	must.Eq(t, "single-node-writer", Suggest("single-node-writr", []string{"single-node-reader-only", "single-node-writer"}))
	must.Eq(t, "", Suggest("zzzzzz", []string{"replicas", "spread"}))
}

func TestList(t *testing.T) {
	t.Parallel()
	must.Eq(t, "", List(nil, false))
	must.Eq(t, `"a"`, List([]string{"a"}, true))
	must.Eq(t, "a, b or c", List([]string{"a", "b", "c"}, false))
	must.Eq(t, "a and b", And([]string{"a", "b"}))
}

func TestValidLabelKey(t *testing.T) {
	t.Parallel()
	for k, want := range map[string]bool{
		"rack": true, "zone_1": true, "failure-domain": true, "": false, "a b": false,
		"a.b": false, "consul-x": false, "ünï": false, string(make([]byte, 129)): false,
	} {
		must.Eq(t, want, ValidLabelKey(k), must.Sprintf("%q", k))
	}
}

func parseBody(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "t.hcl", hcl.InitialPos)
	must.False(t, diags.HasErrors(), must.Sprintf("%v", diags))
	return f.Body
}

func TestBodyStringMap(t *testing.T) {
	t.Parallel()
	body := parseBody(t, "a = 1\nb = \"x\"\nc = true\nd = 2.5\n")
	m, diags := BodyStringMap(body, BoolDigits)
	must.SliceEmpty(t, diags)
	must.Eq(t, "1", m["a"].Value)
	must.Eq(t, "x", m["b"].Value)
	must.Eq(t, "1", m["c"].Value)
	must.Eq(t, "2.5", m["d"].Value)
	must.Eq(t, 3, m["c"].NameRange.Start.Line)
	must.Eq(t, 5, m["c"].ValueRange.Start.Column)

	m, _ = BodyStringMap(body, BoolWords)
	must.Eq(t, "true", m["c"].Value)

	_, diags = BodyStringMap(parseBody(t, "a = [1]\nb = null\nc = {}\n"), BoolWords)
	must.Len(t, 3, diags.Errs())
	for _, d := range diags {
		must.StrContains(t, d.Summary, "value must be a string, number or bool")
	}
}

func TestFirstErrorAndDropOverlapping(t *testing.T) {
	t.Parallel()
	at := func(line, col, end int) *hcl.Range {
		return &hcl.Range{Filename: "f", Start: hcl.Pos{Line: line, Column: col, Byte: line*100 + col}, End: hcl.Pos{Line: line, Column: end, Byte: line*100 + end}}
	}
	diags := hcl.Diagnostics{
		{Severity: hcl.DiagWarning, Summary: "w", Subject: at(1, 1, 2)},
		{Severity: hcl.DiagError, Summary: "late", Subject: at(5, 1, 3)},
		{Severity: hcl.DiagError, Summary: "early", Subject: at(2, 4, 9)},
		{Severity: hcl.DiagError, Summary: "inside early", Subject: at(2, 5, 6)},
	}
	first := FirstError(diags)
	must.Len(t, 1, first)
	must.Eq(t, "early", first[0].Summary)

	kept := DropOverlapping(diags)
	must.Len(t, 3, kept)
	must.Eq(t, "early", kept[2].Summary)
}
