package layering

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/shoenig/test/must"
)

const module = "github.com/saddlebag/saddlebag/"

// rule is one doc.go's import rule, over production code (test files may
// import harnesses the rules keep out of the product). Paths are relative
// to the module and name a package and every package under it ("hcl"
// covers hcl/volspec); a path with a dot is a package of another module.
type rule struct {
	pkg string // the package the rule is about
	doc string // where the rule is written
	// mustNot are packages pkg must not import, directly or through
	// others.
	mustNot []string
	// only, when not nil, are the only Saddlebag packages pkg may import,
	// directly or through others (an empty, non-nil list: none).
	only []string
	// directOnly, when not nil, are the only Saddlebag packages pkg may
	// import directly.
	directOnly []string
	// importedBy, when not nil, are the only packages that may import
	// pkg directly.
	importedBy []string
}

var none = []string{}

// rules are the import rules of the doc.go files, in their words.
var rules = []rule{
	{pkg: "replication", doc: "replication/doc.go", mustNot: []string{"plugin", "leader", "scheduler", "hcl", "replication/frontend", "replication/encrypt"}},
	{pkg: "replication/wire", doc: "replication/wire/doc.go", only: none},
	{pkg: "replication/replica", doc: "replication/replica/doc.go", only: []string{"replication/wire"}},
	{pkg: "replication/frontend/nbd", doc: "replication/frontend/nbd/doc.go",
		mustNot:    []string{"replication/frontend/fuse", "replication/encrypt"},
		directOnly: []string{"replication", "internal/backoff"}},
	{pkg: "replication/frontend/fuse", doc: "replication/frontend/fuse/doc.go",
		mustNot:    []string{"replication/frontend/nbd", "replication/encrypt"},
		directOnly: []string{"replication"}},
	{pkg: "replication/encrypt", doc: "replication/encrypt/doc.go",
		mustNot:    []string{"replication/frontend"},
		directOnly: []string{"replication"}},
	{pkg: "replication/internal/replicatest", doc: "replication/internal/replicatest/doc.go",
		directOnly: []string{"replication", "replication/replica"}, importedBy: none},
	{pkg: "replication/internal/faultproxy", doc: "replication/internal/faultproxy/faultproxy.go", only: none,
		importedBy: []string{"replication/sim"}},
	{pkg: "replication/sim", doc: "replication/sim/doc.go",
		directOnly: []string{"replication", "replication/replica", "replication/wire", "replication/internal/faultproxy", "replication/sim/crashfs"}, importedBy: none},
	{pkg: "replication/sim/crashfs", doc: "replication/sim/crashfs/crashfs.go", only: []string{"replication/replica", "replication/wire"},
		importedBy: []string{"replication/sim"}},
	{pkg: "leader", doc: "leader/doc.go", mustNot: []string{"replication", "plugin", "scheduler", "hcl"}},
	{pkg: "scheduler", doc: "scheduler/doc.go", only: none},
	{pkg: "plugin", doc: "plugin/doc.go",
		mustNot:    []string{"plugin/node", "internal/primary", "internal/fdkeeper"},
		directOnly: []string{"leader", "scheduler", "replication", "hcl/volspec", "internal/volkey", "plugin/reconcile", "plugin/internal/rpc", "internal/ctxutil", "internal/units", "internal/telemetry"},
		importedBy: []string{"cmd/saddlebag"}},
	{pkg: "plugin/node", doc: "plugin/node/doc.go",
		mustNot:    []string{"plugin/reconcile"},
		directOnly: []string{"leader", "scheduler", "replication", "hcl/volspec", "internal/primary", "internal/volkey", "internal/fdkeeper", "plugin/mount", "plugin/internal/rpc", "internal/ctxutil"},
		importedBy: []string{"cmd/saddlebag"}},
	// "plugin" covers plugin/node; plugin/reconcile and plugin/mount are
	// kept out by their own rules (no gRPC status codes).
	{pkg: "plugin/internal/rpc", doc: "plugin/internal/rpc/doc.go",
		directOnly: []string{"leader", "scheduler", "replication", "hcl/volspec", "internal/volkey", "plugin/mount"},
		importedBy: []string{"plugin"}},
	{pkg: "plugin/reconcile", doc: "plugin/reconcile/doc.go",
		mustNot:    []string{"plugin/mount", "internal/primary", "google.golang.org/grpc/status", "google.golang.org/grpc/codes", "github.com/container-storage-interface/spec"},
		directOnly: []string{"leader", "scheduler", "replication", "hcl/volspec", "internal/ctxutil", "internal/units", "internal/telemetry"},
		importedBy: []string{"plugin"}},
	{pkg: "plugin/mount", doc: "plugin/mount/doc.go",
		mustNot:    []string{"leader", "scheduler", "google.golang.org/grpc/status", "google.golang.org/grpc/codes"},
		directOnly: []string{"replication/frontend/fuse", "hcl/volspec"}},
	{pkg: "hcl/volspec", doc: "hcl/volspec/doc.go", only: []string{"hcl/internal/hclutil", "internal/units"}},
	{pkg: "hcl/agentconfig", doc: "hcl/agentconfig/doc.go", only: []string{"hcl/internal/hclutil"}},
	{pkg: "hcl/internal/hclutil", doc: "hcl/internal/hclutil/doc.go", only: none, importedBy: []string{"hcl"}},
	{pkg: "internal/units", doc: "internal/units/doc.go", only: none},
	{pkg: "internal/ctxutil", doc: "internal/ctxutil/ctxutil.go", only: none},
	{pkg: "internal/backoff", doc: "internal/backoff/backoff.go", only: none},
	{pkg: "internal/testcluster", doc: "internal/testcluster/doc.go", only: none},
	{pkg: "internal/statusapi", doc: "internal/statusapi/doc.go", directOnly: []string{"replication", "internal/units"}},
	{pkg: "internal/telemetry", doc: "internal/telemetry/doc.go", directOnly: []string{"replication"}},
	{pkg: "internal/clusterstatus", doc: "internal/clusterstatus/doc.go", directOnly: []string{"leader"}},
	{pkg: "internal/connecttls", doc: "internal/connecttls/doc.go", mustNot: []string{"replication", "plugin", "github.com/container-storage-interface/spec"}},
	{pkg: "internal/bench", doc: "internal/bench/doc.go", importedBy: []string{"cmd/saddlebag"}},
	{pkg: "internal/procstat", doc: "internal/procstat/procstat.go", only: none},
	{pkg: "e2e/cluster", doc: "e2e/cluster/doc.go", only: []string{"internal/testcluster", "internal/procstat", "e2e/cluster/image"}},
	{pkg: "e2e/cluster/timeline", doc: "e2e/cluster/timeline/doc.go", only: none},
	{pkg: "e2e/cluster/image", doc: "e2e/cluster/image/doc.go", only: none},
}

// pkgInfo is what `go list -json` says of one package.
type pkgInfo struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

// graph is the packages by import path.
type graph map[string]pkgInfo

// rel is p as messages and rules write it: relative to the module.
func rel(p string) string { return strings.TrimPrefix(p, module) }

// full is a rule's path as an import path.
func full(p string) string {
	if strings.Contains(strings.SplitN(p, "/", 2)[0], ".") {
		return p
	}
	return module + p
}

// under reports whether import path p is the rule path pattern or a
// package under it.
func under(p, pattern string) bool {
	pattern = full(pattern)
	return p == pattern || strings.HasPrefix(p, pattern+"/")
}

func underAny(p string, patterns []string) bool {
	return slices.ContainsFunc(patterns, func(pat string) bool { return under(p, pat) })
}

// ours reports whether p is one of Saddlebag's packages.
func ours(p string) bool { return strings.HasPrefix(p, module) }

func path(ps []string) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = rel(p)
	}
	return strings.Join(out, " -> ")
}

// chain is a shortest import chain from "from" to "to", for the message.
func (g graph) chain(from, to string) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == to {
			var out []string
			for ; p != ""; p = prev[p] {
				out = append([]string{p}, out...)
			}
			return out
		}
		for _, i := range g[p].Imports {
			if _, seen := prev[i]; !seen {
				prev[i] = p
				queue = append(queue, i)
			}
		}
	}
	return []string{from, "...", to}
}

// violations checks every rule against g.
func violations(g graph, rs []rule) ([]string, error) {
	var out []string
	bad := func(r rule, format string, args ...any) {
		out = append(out, fmt.Sprintf("%s (rule in %s): %s", r.pkg, r.doc, fmt.Sprintf(format, args...)))
	}
	for _, r := range rs {
		pkg := full(r.pkg)
		p, ok := g[pkg]
		if !ok {
			return nil, fmt.Errorf("rule of %s names package %s, which does not exist: update the rule with the package", r.doc, r.pkg)
		}
		for _, d := range p.Deps {
			if underAny(d, r.mustNot) {
				bad(r, "must not import %s, but imports it: %s", rel(d), path(g.chain(pkg, d)))
			}
			if r.only != nil && ours(d) && !underAny(d, r.only) {
				bad(r, "may import only %v of Saddlebag's packages, but imports %s: %s", r.only, rel(d), path(g.chain(pkg, d)))
			}
		}
		if r.directOnly != nil {
			for _, i := range p.Imports {
				if ours(i) && !underAny(i, r.directOnly) {
					bad(r, "may import only %v of Saddlebag's packages, but imports %s", r.directOnly, rel(i))
				}
			}
		}
		if r.importedBy != nil {
			var names []string
			for name := range g {
				names = append(names, name)
			}
			sort.Strings(names)
			for _, name := range names {
				if under(name, r.pkg) || !ours(name) || underAny(name, r.importedBy) {
					continue
				}
				if slices.Contains(g[name].Imports, pkg) {
					bad(r, "may be imported only by %v, but %s imports it", r.importedBy, rel(name))
				}
			}
		}
	}
	return out, nil
}

// moduleGraph reads the module's package graph, production code only.
func moduleGraph(t *testing.T) graph {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	must.NoError(t, err)
	root := filepath.Dir(strings.TrimSpace(string(out)))
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Imports,Deps", "./...")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err = cmd.Output()
	must.NoError(t, err, must.Sprint(stderr.String()))
	g := graph{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkgInfo
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else {
			must.NoError(t, err)
		}
		g[p.ImportPath] = p
	}
	return g
}

// TestImportRules fails on any import that breaks a doc.go's rule.
func TestImportRules(t *testing.T) {
	v, err := violations(moduleGraph(t), rules)
	must.NoError(t, err)
	if len(v) > 0 {
		t.Fatalf("imports break the packages' rules:\n%s", strings.Join(v, "\n"))
	}
}

// Each kind of rule catches its breach, directly and through another
// package: the check above can fail.
func TestViolationsFound(t *testing.T) {
	m := module
	g := graph{
		m + "replication":      {Imports: []string{m + "internal/ctxutil", "sync"}, Deps: []string{m + "internal/ctxutil", "sync"}},
		m + "internal/ctxutil": {},
		m + "leader":           {Imports: []string{m + "internal/ctxutil"}, Deps: []string{m + "internal/ctxutil"}},
		m + "scheduler":        {Imports: []string{"sort"}, Deps: []string{"sort"}},
		m + "plugin":           {Imports: []string{m + "leader"}, Deps: []string{m + "leader", m + "internal/ctxutil"}},
		m + "cmd/saddlebag":    {Imports: []string{m + "plugin"}, Deps: []string{m + "plugin", m + "leader", m + "internal/ctxutil"}},
		"sort":                 {},
		"sync":                 {},
	}
	rs := []rule{
		{pkg: "replication", doc: "replication/doc.go", mustNot: []string{"leader", "plugin"}},
		{pkg: "scheduler", doc: "scheduler/doc.go", only: none},
		{pkg: "plugin", doc: "plugin/doc.go", directOnly: []string{"leader"}, importedBy: []string{"cmd/saddlebag"}},
	}
	v, err := violations(g, rs)
	must.NoError(t, err)
	must.SliceEmpty(t, v, must.Sprint("the graph keeps every rule"))

	withImport := func(g graph, from, to string, through ...string) graph {
		out := graph{}
		for k, p := range g {
			out[k] = pkgInfo{Imports: slices.Clone(p.Imports), Deps: slices.Clone(p.Deps)}
		}
		p := out[module+from]
		p.Imports = append(p.Imports, module+to)
		p.Deps = append(p.Deps, module+to)
		p.Deps = append(p.Deps, out[module+to].Deps...)
		out[module+from] = p
		return out
	}
	for _, c := range []struct {
		name string
		g    graph
		want string
	}{
		{"mustNot, directly", withImport(g, "replication", "leader"), "replication (rule in replication/doc.go): must not import leader, but imports it: replication -> leader"},
		{"mustNot, through another", withImport(g, "replication", "cmd/saddlebag"), "must not import plugin, but imports it: replication -> cmd/saddlebag -> plugin"},
		{"only", withImport(g, "scheduler", "internal/ctxutil"), "scheduler (rule in scheduler/doc.go): may import only [] of Saddlebag's packages, but imports internal/ctxutil"},
		{"directOnly", withImport(g, "plugin", "replication"), "may import only [leader] of Saddlebag's packages, but imports replication"},
		{"importedBy", withImport(g, "leader", "plugin"), "plugin (rule in plugin/doc.go): may be imported only by [cmd/saddlebag], but leader imports it"},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, err := violations(c.g, rs)
			must.NoError(t, err)
			must.SliceNotEmpty(t, v)
			must.StrContains(t, strings.Join(v, "\n"), c.want)
		})
	}

	_, err = violations(g, []rule{{pkg: "gone", doc: "gone/doc.go", only: none}})
	must.ErrorContains(t, err, "names package gone, which does not exist")
}
