package hclutil

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// Attr is one entry of a free-form map: its value as a string and where it
// was written.
type Attr struct {
	Value      string
	NameRange  hcl.Range // the key
	ValueRange hcl.Range // the value
}

// BoolStyle says how a bool value becomes a string.
type BoolStyle int

const (
	// BoolWords turns true into "true" (HCL's own conversion).
	BoolWords BoolStyle = iota
	// BoolDigits turns true into "1" and false into "0", which is what
	// `nomad volume create` sends: it decodes HCL 1 values into Go values
	// and then into map[string]string with mapstructure.WeakDecode.
	BoolDigits
)

// BodyStringMap reads a block whose body is free-form key = value
// attributes (parameters { replicas = 2 }) into strings. Nested blocks
// are an error.
func BodyStringMap(body hcl.Body, bools BoolStyle) (map[string]Attr, hcl.Diagnostics) {
	attrs, diags := body.JustAttributes()
	out := make(map[string]Attr, len(attrs))
	for name, a := range attrs {
		s, d := ValueString(a.Expr, bools)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		out[name] = Attr{Value: s, NameRange: a.NameRange, ValueRange: a.Expr.Range()}
	}
	return out, diags
}

// ExprStringMap reads an object expression ({ rack = "r1", "zone" = "a" })
// into strings.
func ExprStringMap(expr hcl.Expression, bools BoolStyle) (map[string]Attr, hcl.Diagnostics) {
	pairs, diags := hcl.ExprMap(expr)
	if diags.HasErrors() {
		return nil, diags
	}
	out := make(map[string]Attr, len(pairs))
	for _, p := range pairs {
		k, d := ValueString(p.Key, BoolWords)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		if prev, dup := out[k]; dup {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  fmt.Sprintf("duplicate key %q", k),
				Detail:   fmt.Sprintf("%q is already set at line %d; give each key once", k, prev.NameRange.Start.Line),
				Subject:  p.Key.Range().Ptr(),
			})
			continue
		}
		v, d := ValueString(p.Value, bools)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		out[k] = Attr{Value: v, NameRange: p.Key.Range(), ValueRange: p.Value.Range()}
	}
	return out, diags
}

// ValueString evaluates expr with no variables or functions (volume specs
// and agent configs have none) and converts a string, number or bool to
// a string.
func ValueString(expr hcl.Expression, bools BoolStyle) (string, hcl.Diagnostics) {
	v, diags := expr.Value(nil)
	if diags.HasErrors() {
		return "", diags
	}
	bad := func(why string) (string, hcl.Diagnostics) {
		return "", append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "value must be a string, number or bool",
			Detail:   why,
			Subject:  expr.Range().Ptr(),
		})
	}
	switch {
	case v.IsNull():
		return bad("got null")
	case !v.IsWhollyKnown():
		return bad("the value is not known")
	case v.Type() == cty.Bool && bools == BoolDigits:
		if v.True() {
			return "1", diags
		}
		return "0", diags
	case !v.Type().IsPrimitiveType():
		return bad("got " + v.Type().FriendlyName())
	}
	s, err := convert.Convert(v, cty.String)
	if err != nil {
		return bad(err.Error())
	}
	return s.AsString(), diags
}

// labelKey is Consul's rule for service and node meta keys, which is where
// Saddlebag's node labels end up.
var labelKey = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,128}$`)

// LabelKeyRule says what a label key may be, for error messages.
const LabelKeyRule = "1-128 letters, digits, '_' or '-', not starting with \"consul-\" (Consul's rule for meta keys)"

// ValidLabelKey reports whether k can be a node label (a Consul meta key).
func ValidLabelKey(k string) bool {
	return labelKey.MatchString(k) && !strings.HasPrefix(k, "consul-")
}

// Suggest returns the candidate nearest to s when it is close enough to be
// a likely typo, else "".
func Suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := distance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// List joins names as "a, b or c", each quoted when quote is set.
func List(names []string, quote bool) string { return join(names, quote, "or") }

// And joins names as "a, b and c".
func And(names []string) string { return join(names, false, "and") }

func join(names []string, quote bool, conj string) string {
	q := slices.Clone(names)
	if quote {
		for i, n := range q {
			q[i] = strconv.Quote(n)
		}
	}
	switch len(q) {
	case 0:
		return ""
	case 1:
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " " + conj + " " + q[len(q)-1]
}

// SortByPosition orders diagnostics by file, line and column, those
// without a position first, keeping the order of equal ones.
func SortByPosition(diags hcl.Diagnostics) {
	sort.SliceStable(diags, func(i, j int) bool {
		a, b := diags[i].Subject, diags[j].Subject
		switch {
		case a == nil || b == nil:
			return a == nil && b != nil
		case a.Filename != b.Filename:
			return a.Filename < b.Filename
		case a.Start.Line != b.Start.Line:
			return a.Start.Line < b.Start.Line
		}
		return a.Start.Column < b.Start.Column
	})
}

// Error is a convenience constructor for an error diagnostic at subject.
func Error(subject hcl.Range, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: subject.Ptr()}
}

// Warning is a convenience constructor for a warning diagnostic at subject.
func Warning(subject hcl.Range, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: summary, Detail: detail, Subject: subject.Ptr()}
}

// FirstError returns the first error of diags by position, alone. A
// parser recovering from a syntax error reports follow-on errors (an
// unterminated string turns every later line into one) that only bury
// the real one.
func FirstError(diags hcl.Diagnostics) hcl.Diagnostics {
	errs := diags.Errs()
	if len(errs) == 0 {
		return diags
	}
	only := make(hcl.Diagnostics, 0, len(errs))
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			only = append(only, d)
		}
	}
	SortByPosition(only)
	return only[:1]
}

// DropOverlapping removes each error whose subject overlaps that of an
// error before it: gohcl follows "Variables not allowed" with "Unsuitable
// value type" for the same expression, which says nothing more.
func DropOverlapping(diags hcl.Diagnostics) hcl.Diagnostics {
	var out hcl.Diagnostics
	var seen []hcl.Range
	for _, d := range diags {
		if d.Severity == hcl.DiagError && d.Subject != nil {
			if slices.ContainsFunc(seen, d.Subject.Overlaps) {
				continue
			}
			seen = append(seen, *d.Subject)
		}
		out = append(out, d)
	}
	return out
}
