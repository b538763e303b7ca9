package volspec

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	hcl1 "github.com/hashicorp/hcl"
	"github.com/hashicorp/hcl/hcl/ast"
	hcl1parser "github.com/hashicorp/hcl/hcl/parser"
	"github.com/hashicorp/hcl/hcl/token"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/nomad/api"
	"github.com/zclconf/go-cty/cty"

	"github.com/saddlebag/saddlebag/hcl/internal/hclutil"
)

// This file reads a spec file the way `nomad volume create` does (Nomad
// 1.11, command/volume_create.go and volume_register_csi.go): HCL 1
// (github.com/hashicorp/hcl at Nomad's pinned fork), JSON whenever the
// first non-space character is "{", whatever the file is called; the
// type read first; then the top-level settings decoded into a map and
// weakly into api.CSIVolume (mapstructure.WeakDecode: numbers and bools
// become strings, true is "1"); capacity_min and capacity_max parsed from
// the first such literal with go-humanize; capability, mount_options and
// topology_request blocks each checked for unknown keys and decoded on
// their own. What Nomad rejects is an error here, at the position HCL 1
// gives; what Nomad reads but then ignores (an unknown top-level
// argument, a second mount_options block, a topology without segments) is
// a warning, so that every file Nomad accepts validates.
//
// The result is a rawSpec whose values are exactly what Nomad sends and
// whose ranges are where the file wrote them, for the checks of check.go.

// nomadDecoded is what Nomad's CLI would send, with where it came from.
type nomadDecoded struct {
	vol *api.CSIVolume
	raw rawSpec
}

// volumeKeys are the top-level settings `nomad volume create` reads for a
// CSI volume; createIgnored are those it reads but that a create replaces
// (they are for `nomad volume register`).
var (
	volumeKeys = []string{
		"id", "name", "namespace", "type", "plugin_id", "capacity_min", "capacity_max",
		"snapshot_id", "clone_id", "capability", "mount_options", "topology_request",
		"secrets", "parameters",
	}
	createIgnored = []string{"external_id", "context"}
)

// parseNomad parses src with HCL 1 and decodes it as Nomad's CLI does.
// A nil result comes with errors.
func parseNomad(filename string, src []byte) (*nomadDecoded, hcl.Diagnostics) {
	start := hcl.Range{Filename: filename, Start: hcl.InitialPos, End: hcl.InitialPos}
	file, err := hcl1.Parse(string(src))
	if err != nil {
		if kind := lookAlike(filename, src, nil); kind != "" {
			return nil, hcl.Diagnostics{notASpec(start, kind)}
		}
		d := hcl1Error(filename, start, "syntax error", err)
		if strings.Contains(d.Detail, "IDENT") {
			d.Detail += ": a volume spec is read as Nomad reads it, with HCL 1, so values are literals (no variables or functions)"
		}
		return nil, hcl.Diagnostics{d}
	}
	list, ok := file.Node.(*ast.ObjectList)
	if !ok {
		return nil, hcl.Diagnostics{hclutil.Error(start, "syntax error", "the file must be a list of settings")}
	}
	if kind := lookAlike(filename, src, list); kind != "" {
		return nil, hcl.Diagnostics{notASpec(start, kind)}
	}
	// Nomad reads type first, to dispatch on it.
	var dispatch struct {
		T string `hcl:"type"`
	}
	if err := hcl1.DecodeObject(&dispatch, file); err != nil {
		return nil, hcl.Diagnostics{hcl1Error(filename, itemRange(filename, list, "type", start), "cannot read type", err)}
	}

	d := &nomadDecoded{vol: &api.CSIVolume{}}
	var diags hcl.Diagnostics
	errAt := func(r hcl.Range, summary, detail string) { diags = append(diags, hclutil.Error(r, summary, detail)) }
	warnAt := func(r hcl.Range, summary, detail string) { diags = append(diags, hclutil.Warning(r, summary, detail)) }

	var m map[string]any
	if err := hcl1.DecodeObject(&m, list); err != nil {
		return nil, hcl.Diagnostics{hcl1Error(filename, start, "cannot decode the volume spec", err)}
	}
	for _, k := range []string{"capability", "mount_options", "capacity_max", "capacity_min", "topology_request", "type"} {
		delete(m, k)
	}
	if err := mapstructure.WeakDecode(m, d.vol); err != nil {
		// Find the setting at fault: decode them one at a time.
		keys := slices.Sorted(maps.Keys(m))
		at := start
		for _, k := range keys {
			if mapstructure.WeakDecode(map[string]any{k: m[k]}, &api.CSIVolume{}) != nil {
				at = itemRange(filename, list, k, start)
				break
			}
		}
		errAt(at, "cannot decode the volume spec", err.Error())
		return nil, diags
	}

	raw := &d.raw
	for _, it := range list.Items {
		key := itemKey(it)
		r := keyRange(filename, it, len(key), start)
		switch {
		case slices.ContainsFunc(volumeKeys, func(k string) bool { return strings.EqualFold(k, key) }):
			if _, lit := it.Val.(*ast.LiteralType); lit && lastItem(list, key) != it {
				warnAt(r, key+" is set twice", "Nomad uses the last value and ignores this one: remove it")
			}
		case slices.ContainsFunc(createIgnored, func(k string) bool { return strings.EqualFold(k, key) }):
			warnAt(r, key+" is ignored by nomad volume create",
				"it is for nomad volume register, which registers a volume that already exists; on create, the plugin returns the new volume's "+key)
		default:
			warnAt(r, fmt.Sprintf("unknown argument %q%s", key, suggestion(key, volumeKeys)),
				"nomad volume create ignores it; a CSI volume spec sets "+hclutil.And(volumeKeys))
		}
		if len(it.Keys) > 1 {
			warnAt(r, fmt.Sprintf("%s has a label, which Nomad ignores", key), "write "+key+" { ... } without a label")
		}
	}

	scalar := func(key, value string, dst **string, rng *hcl.Range) {
		it := lastItem(list, key)
		if it == nil {
			return
		}
		if lit, ok := it.Val.(*ast.LiteralType); ok {
			*rng = litRange(filename, src, it, lit, keyRange(filename, it, len(key), start))
		} else {
			*rng = keyRange(filename, it, len(key), start)
		}
		*dst = &value
	}
	scalar("id", d.vol.ID, &raw.ID, &raw.IDRange)
	scalar("name", d.vol.Name, &raw.Name, &raw.NameRange)
	scalar("namespace", d.vol.Namespace, &raw.Namespace, &raw.NamespaceRange)
	scalar("type", dispatch.T, &raw.Type, &raw.TypeRange)
	scalar("plugin_id", d.vol.PluginID, &raw.PluginID, &raw.PluginIDRange)
	scalar("snapshot_id", d.vol.SnapshotID, &raw.SnapshotID, &raw.SnapshotIDRange)
	scalar("clone_id", d.vol.CloneID, &raw.CloneID, &raw.CloneIDRange)

	// capacity_min, capacity_max: the first one, if it is a literal; its
	// text without quotes, as Nomad gives it to humanize.ParseBytes.
	capacity := func(key string, dst **string, rng *hcl.Range) {
		items := blocks(list, key)
		if len(items) == 0 {
			return
		}
		lit, ok := items[0].Val.(*ast.LiteralType)
		if !ok {
			warnAt(keyRange(filename, items[0], len(key), start), key+" is not a size",
				`Nomad ignores a `+key+` that is not a plain value; write it as a string such as "10GiB"`)
			return
		}
		v := strings.Trim(lit.Token.Text, `"`)
		*dst, *rng = &v, litRange(filename, src, items[0], lit, keyRange(filename, items[0], len(key), start))
	}
	capacity("capacity_min", &raw.CapacityMin, &raw.CapacityMinRange)
	capacity("capacity_max", &raw.CapacityMax, &raw.CapacityMaxRange)

	more, ok := decodeBlocksLikeNomad(filename, src, list, d, start)
	diags = append(diags, more...)
	if !ok {
		return nil, diags
	}

	raw.Secrets = stringMapBody(filename, src, list, "secrets", d.vol.Secrets, start)
	raw.Parameters = stringMapBody(filename, src, list, "parameters", d.vol.Parameters, start)
	return d, diags
}

// decodeBlocksLikeNomad decodes the capability, mount_options and
// topology_request blocks as Nomad does, into d.vol and d.raw. ok is false
// when Nomad would refuse the file.
func decodeBlocksLikeNomad(filename string, src []byte, list *ast.ObjectList, d *nomadDecoded, start hcl.Range) (diags hcl.Diagnostics, ok bool) {
	fail := func(at hcl.Range, summary string, err error) (hcl.Diagnostics, bool) {
		return append(diags, hcl1Error(filename, at, summary, err)), false
	}
	for _, it := range blocks(list, "capability") {
		at := keyRange(filename, it, 1, start)
		if err := checkKeys(it.Val, []string{"access_mode", "attachment_mode"}); err != nil {
			return fail(at, "bad capability block", err)
		}
		ot, isObj := it.Val.(*ast.ObjectType)
		if !isObj {
			break
		}
		var m map[string]any
		if err := hcl1.DecodeObject(&m, ot.List); err != nil {
			return fail(at, "bad capability block", err)
		}
		var c *api.CSIVolumeCapability
		if err := mapstructure.WeakDecode(&m, &c); err != nil {
			return fail(at, "bad capability block", err)
		}
		d.vol.RequestedCapabilities = append(d.vol.RequestedCapabilities, c)
		rc := rawCapability{DefRange: at}
		if lastItem(ot.List, "access_mode") != nil {
			v := string(c.AccessMode)
			rc.AccessMode, rc.AccessModeRange = &v, valueRange(filename, src, ot.List, "access_mode", at)
		}
		if lastItem(ot.List, "attachment_mode") != nil {
			v := string(c.AttachmentMode)
			rc.AttachmentMode, rc.AttachmentModeRange = &v, valueRange(filename, src, ot.List, "attachment_mode", at)
		}
		d.raw.Capabilities = append(d.raw.Capabilities, rc)
	}

	for i, it := range blocks(list, "mount_options") {
		at := keyRange(filename, it, 1, start)
		if i > 0 {
			diags = append(diags, hclutil.Warning(at, "a second mount_options block",
				"Nomad reads the first mount_options block only and ignores this one: merge them"))
			continue
		}
		if err := checkKeys(it.Val, []string{"fs_type", "mount_flags"}); err != nil {
			return fail(at, "bad mount_options block", err)
		}
		ot, isObj := it.Val.(*ast.ObjectType)
		if !isObj {
			break
		}
		var opts *api.CSIMountOptions
		if err := hcl1.DecodeObject(&opts, ot.List); err != nil {
			return fail(at, "bad mount_options block", err)
		}
		d.vol.MountOptions = opts
		mo := &rawMountOptions{DefRange: at}
		if opts != nil {
			mo.MountFlags = opts.MountFlags
			if lastItem(ot.List, "fs_type") != nil {
				v := opts.FSType
				mo.FSType, mo.FSTypeRange = &v, valueRange(filename, src, ot.List, "fs_type", at)
			}
		}
		d.raw.MountOptions = mo
	}

	reqs := blocks(list, "topology_request")
	for i, it := range reqs {
		at := keyRange(filename, it, 1, start)
		if err := checkKeys(it.Val, []string{"preferred", "required"}); err != nil {
			return fail(at, "bad topology_request block", err)
		}
		ot, isObj := it.Val.(*ast.ObjectType)
		if !isObj {
			break
		}
		// topology_request -> required|preferred -> topology -> segments
		decoded := map[string][]map[string][]map[string][]map[string]string{}
		if err := hcl1.DecodeObject(&decoded, ot.List); err != nil {
			diags, _ = fail(at, "bad topology_request block", err)
			diags[len(diags)-1].Detail += `: write required { topology { segments { rack = "r1" } } } (and preferred the same way)`
			return diags, false
		}
		if i < len(reqs)-1 {
			diags = append(diags, hclutil.Warning(at, "a topology_request block that is replaced",
				"Nomad reads every topology_request block and keeps the last: merge them"))
		}
		d.vol.RequestedTopologies = &api.CSITopologyRequest{}
		tr := &rawTopologyRequest{DefRange: at}
		for _, kind := range []string{"required", "preferred"} {
			ts, rt, warn := topologiesLikeNomad(filename, ot.List, kind, decoded[kind], at)
			diags = append(diags, warn...)
			if kind == "required" {
				d.vol.RequestedTopologies.Required, tr.Required = ts, rt
			} else {
				d.vol.RequestedTopologies.Preferred, tr.Preferred = ts, rt
			}
		}
		if tr.Required == nil && tr.Preferred == nil {
			diags = append(diags, hclutil.Warning(at, "topology_request asks for nothing",
				`no topology in it has segments, so Nomad sends no topology: add topology { segments { rack = "r1" } }, or leave topology_request out`))
			d.raw.TopologyRequest = nil
			continue
		}
		d.raw.TopologyRequest = tr
	}
	return diags, true
}

// topologiesLikeNomad picks the topologies of one kind (required or
// preferred) as Nomad does: from the first such block that has a topology
// with segments, each non-empty segments map one topology (so a topology
// block with two segments blocks is two topologies).
func topologiesLikeNomad(filename string, list *ast.ObjectList, kind string, decoded []map[string][]map[string][]map[string]string, blockAt hcl.Range) ([]*api.CSITopology, *rawTopologies, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	blocks := blocks(list, kind)
	for bi, topo := range decoded {
		var ts []*api.CSITopology
		var rts []rawTopology
		at := blockAt
		var segAt []hcl.Range
		if bi < len(blocks) {
			at = keyRange(filename, blocks[bi], len(kind), blockAt)
			segAt = segmentsRanges(filename, blocks[bi].Val, at)
		}
		n := 0
		for _, segments := range topo["topology"] {
			for _, segment := range segments["segments"] {
				r := at
				if n < len(segAt) {
					r = segAt[n]
				}
				n++
				if len(segment) == 0 {
					diags = append(diags, hclutil.Warning(r, kind+" topology is missing segments",
						`Nomad drops a topology without segments: give the node labels it stands for, segments { rack = "r1" }`))
					continue
				}
				ts = append(ts, &api.CSITopology{Segments: segment})
				rts = append(rts, rawTopology{Body: segmentsBody(segment, r), DefRange: r})
			}
		}
		if len(ts) > 0 {
			for _, later := range blocks[min(bi+1, len(blocks)):] {
				diags = append(diags, hclutil.Warning(keyRange(filename, later, len(kind), blockAt), "a "+kind+" block that Nomad ignores",
					"Nomad reads the first "+kind+" block that has a topology with segments: put every topology in that one"))
			}
			return ts, &rawTopologies{Topologies: rts, DefRange: at}, diags
		}
	}
	return nil, nil, diags
}

// segmentsRanges lists, in order, where each segments map of a required
// or preferred block is written.
func segmentsRanges(filename string, n ast.Node, fallback hcl.Range) []hcl.Range {
	var out []hcl.Range
	ast.Walk(n, func(n ast.Node) (ast.Node, bool) {
		if it, ok := n.(*ast.ObjectItem); ok && itemKey(it) == "segments" {
			out = append(out, keyRange(filename, it, len("segments"), fallback))
		}
		return n, true
	})
	return out
}

// segmentsBody is one topology's segments as the body topology.go reads:
// segments = { key = "value", ... }, every value at r.
func segmentsBody(seg map[string]string, r hcl.Range) hcl.Body {
	items := make([]hclsyntax.ObjectConsItem, 0, len(seg))
	for _, k := range slices.Sorted(maps.Keys(seg)) {
		items = append(items, hclsyntax.ObjectConsItem{
			KeyExpr:   &hclsyntax.ObjectConsKeyExpr{Wrapped: &hclsyntax.LiteralValueExpr{Val: cty.StringVal(k), SrcRange: r}},
			ValueExpr: &hclsyntax.LiteralValueExpr{Val: cty.StringVal(seg[k]), SrcRange: r},
		})
	}
	return &hclsyntax.Body{
		Attributes: hclsyntax.Attributes{"segments": {
			Name: "segments", Expr: &hclsyntax.ObjectConsExpr{Items: items, SrcRange: r}, SrcRange: r, NameRange: r, EqualsRange: r,
		}},
		SrcRange: r, EndRange: r,
	}
}

// stringMapBody is a block of strings Nomad decoded (secrets,
// parameters) as a body check.go reads: each value as Nomad sends it, at
// the position of the last place the file sets that key.
func stringMapBody(filename string, src []byte, list *ast.ObjectList, key string, values map[string]string, start hcl.Range) *rawMap {
	items := list.Filter(key).Items
	if len(items) == 0 && values == nil {
		return nil
	}
	def := start
	if len(items) > 0 {
		def = keyRange(filename, items[0], len(key), start)
	}
	names, vals := map[string]hcl.Range{}, map[string]hcl.Range{}
	for _, it := range items {
		ast.Walk(it.Val, func(n ast.Node) (ast.Node, bool) {
			if in, ok := n.(*ast.ObjectItem); ok {
				k := itemKey(in)
				names[k] = keyRange(filename, in, len(in.Keys[0].Token.Text), def)
				if lit, ok := in.Val.(*ast.LiteralType); ok {
					vals[k] = litRange(filename, src, in, lit, names[k])
				} else {
					vals[k] = names[k]
				}
				return n, false
			}
			return n, true
		})
	}
	body := &hclsyntax.Body{Attributes: hclsyntax.Attributes{}, SrcRange: def, EndRange: def}
	for k, v := range values {
		nr, ok := names[k]
		if !ok {
			nr = def
		}
		vr, ok := vals[k]
		if !ok {
			vr = nr
		}
		body.Attributes[k] = &hclsyntax.Attribute{
			Name: k, Expr: &hclsyntax.LiteralValueExpr{Val: cty.StringVal(v), SrcRange: vr},
			SrcRange: hcl.RangeBetween(nr, vr), NameRange: nr, EqualsRange: nr,
		}
	}
	return &rawMap{Body: body, DefRange: def}
}

// checkKeys refuses keys of a block other than valid, as Nomad's
// helper.CheckHCLKeys does: every unknown key, in one error.
func checkKeys(n ast.Node, valid []string) error {
	var list *ast.ObjectList
	switch n := n.(type) {
	case *ast.ObjectList:
		list = n
	case *ast.ObjectType:
		list = n.List
	default:
		return fmt.Errorf("must be a block { ... }, not %s", nodeKind(n))
	}
	var bad []string
	var at token.Pos
	for _, it := range list.Items {
		if k := itemKey(it); !slices.Contains(valid, k) {
			bad = append(bad, k)
			if !at.IsValid() {
				at = it.Pos()
			}
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return &hcl1parser.PosError{Pos: at, Err: fmt.Errorf("invalid key %s: the keys are %s", hclutil.And(bad), hclutil.And(valid))}
}

func nodeKind(n ast.Node) string {
	switch n.(type) {
	case *ast.LiteralType:
		return "a value"
	case *ast.ListType:
		return "a list"
	}
	return fmt.Sprintf("%T", n)
}

// hcl1Error turns an HCL 1 or decoding error into a diagnostic at the
// position it names, or at fallback.
func hcl1Error(filename string, fallback hcl.Range, summary string, err error) *hcl.Diagnostic {
	at := fallback
	msg := err.Error()
	var pe *hcl1parser.PosError
	if errors.As(err, &pe) {
		at = tokRange(filename, pe.Pos, 1, fallback)
		msg = pe.Err.Error()
	}
	return hclutil.Error(at, summary, msg)
}

func itemKey(it *ast.ObjectItem) string {
	if len(it.Keys) == 0 {
		return ""
	}
	if s, ok := it.Keys[0].Token.Value().(string); ok {
		return s
	}
	return it.Keys[0].Token.Text
}

// lastItem is the last item of list named key, in any case (Nomad's
// decoding matches names regardless of case).
func lastItem(list *ast.ObjectList, key string) *ast.ObjectItem {
	var last *ast.ObjectItem
	for _, it := range list.Items {
		if strings.EqualFold(itemKey(it), key) {
			last = it
		}
	}
	return last
}

// itemRange is where the first setting key of list is written.
func itemRange(filename string, list *ast.ObjectList, key string, fallback hcl.Range) hcl.Range {
	for _, it := range list.Items {
		if itemKey(it) == key {
			return keyRange(filename, it, len(key), fallback)
		}
	}
	return fallback
}

// valueRange is where the value of the last key of list is written.
func valueRange(filename string, src []byte, list *ast.ObjectList, key string, fallback hcl.Range) hcl.Range {
	it := lastItem(list, key)
	if it == nil {
		return fallback
	}
	if lit, ok := it.Val.(*ast.LiteralType); ok {
		return litRange(filename, src, it, lit, keyRange(filename, it, len(key), fallback))
	}
	return keyRange(filename, it, len(key), fallback)
}

// blocks are the items of list named key with no label, as Nomad's
// list.Filter(key).Elem() finds them (names match regardless of case).
func blocks(list *ast.ObjectList, key string) []*ast.ObjectItem {
	var out []*ast.ObjectItem
	for _, it := range list.Items {
		if len(it.Keys) == 1 && strings.EqualFold(itemKey(it), key) {
			out = append(out, it)
		}
	}
	return out
}

// keyRange is where item's key is written: its first key's position, or
// in JSON, where HCL 1 keeps no key positions, its colon's.
func keyRange(filename string, it *ast.ObjectItem, n int, fallback hcl.Range) hcl.Range {
	p := it.Assign
	if len(it.Keys) > 0 && it.Keys[0].Token.Pos.IsValid() {
		p = it.Keys[0].Token.Pos
	}
	return tokRange(filename, p, n, fallback)
}

// litRange is where the literal value of item it is written. HCL 1's
// JSON keeps no positions of values, only of each item's colon: there the
// value is found in src after the colon; failing that it is the empty
// range at fallback, so that nothing takes other text for its source.
func litRange(filename string, src []byte, it *ast.ObjectItem, lit *ast.LiteralType, fallback hcl.Range) hcl.Range {
	if lit.Token.Pos.IsValid() {
		return tokRange(filename, lit.Token.Pos, len(lit.Token.Text), fallback)
	}
	empty := fallback
	empty.End = empty.Start
	a := it.Assign
	if !a.IsValid() || a.Offset < 0 || a.Offset >= len(src) || src[a.Offset] != ':' {
		return empty
	}
	p := hcl.Pos{Line: a.Line, Column: a.Column + 1, Byte: a.Offset + 1}
	for p.Byte < len(src) && strings.ContainsRune(" \t\r\n", rune(src[p.Byte])) {
		if src[p.Byte] == '\n' {
			p.Line, p.Column = p.Line+1, 0
		}
		p.Byte++
		p.Column++
	}
	text := lit.Token.Text
	if text == "" || !strings.HasPrefix(string(src[p.Byte:]), text) {
		return empty
	}
	e := p
	e.Byte += len(text)
	e.Column += len(text)
	return hcl.Range{Filename: filename, Start: p, End: e}
}

// tokRange is the range of a token of n bytes at p (HCL 1 positions are
// 1-based lines and columns, as HCL 2's); fallback when p is unknown,
// as it is for most of HCL 1's JSON.
func tokRange(filename string, p token.Pos, n int, fallback hcl.Range) hcl.Range {
	if !p.IsValid() || p.Line < 1 {
		return fallback
	}
	s := hcl.Pos{Line: p.Line, Column: max(p.Column, 1), Byte: p.Offset}
	e := s
	if n > 0 {
		e.Column += n
		e.Byte += n
	}
	return hcl.Range{Filename: filename, Start: s, End: e}
}
