package volspec

import (
	"github.com/hashicorp/hcl/v2"

	"github.com/saddlebag/saddlebag/hcl/internal/hclutil"
)

func decodeTopologyRequest(t *rawTopologyRequest) (*TopologyRequest, hcl.Diagnostics) {
	req := &TopologyRequest{DefRange: t.DefRange}
	var diags hcl.Diagnostics
	if t.Required == nil && t.Preferred == nil {
		diags = append(diags, hclutil.Error(t.DefRange, "topology_request is empty",
			"give a required { topology { ... } } or preferred { topology { ... } } block, or leave topology_request out"))
	}
	decode := func(ts *rawTopologies, kind string) []Topology {
		if ts == nil {
			return nil
		}
		if len(ts.Topologies) == 0 {
			diags = append(diags, hclutil.Error(ts.DefRange, kind+" has no topology block",
				`add topology { segments { rack = "r1" } }`))
		}
		var out []Topology
		for _, rt := range ts.Topologies {
			seg, d := decodeSegments(rt)
			diags = append(diags, d...)
			if !d.HasErrors() && len(seg) == 0 {
				diags = append(diags, hclutil.Error(rt.DefRange, kind+" topology is missing segments",
					`give the node labels it stands for: segments = { rack = "r1" }`))
			}
			out = append(out, Topology{Segments: seg, DefRange: rt.DefRange})
		}
		return out
	}
	req.Required = decode(t.Required, "required")
	req.Preferred = decode(t.Preferred, "preferred")
	return req, diags
}

var (
	segmentsBlockSchema = &hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{{Type: "segments"}}}
	segmentsAttrSchema  = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "segments"}}}
)

// decodeSegments reads a topology block's segments, written either as a
// block, segments { rack = "r1" }, or as an attribute,
// segments = { "rack" = "r1", "zone" = "a" }; Nomad reads both. Anything
// else in the block is an error.
func decodeSegments(t rawTopology) (map[string]string, hcl.Diagnostics) {
	blocks, rest, diags := t.Body.PartialContent(segmentsBlockSchema)
	attrs, d := rest.Content(segmentsAttrSchema)
	diags = append(diags, d...)
	if diags.HasErrors() {
		return nil, diags
	}
	var found []map[string]hclutil.Attr
	var at []hcl.Range
	for _, b := range blocks.Blocks {
		m, d := hclutil.BodyStringMap(b.Body, hclutil.BoolDigits)
		diags = append(diags, d...)
		found, at = append(found, m), append(at, b.DefRange)
	}
	if a, ok := attrs.Attributes["segments"]; ok {
		m, d := hclutil.ExprStringMap(a.Expr, hclutil.BoolDigits)
		diags = append(diags, d...)
		found, at = append(found, m), append(at, a.NameRange)
	}
	if len(found) > 1 {
		diags = append(diags, hclutil.Error(at[len(at)-1], "segments given twice in one topology",
			"put every segment of this topology in one segments map; a second topology needs its own topology block"))
	}
	if diags.HasErrors() || len(found) == 0 {
		return nil, diags
	}
	return values(found[0]), diags
}
