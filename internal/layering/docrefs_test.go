package layering

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/shoenig/test/must"
)

// ref is a reference to a section of the architecture document, as code
// comments and the README write it: docs/architecture.md, "Section" (a
// comment may break the line between the two).
var ref = regexp.MustCompile("docs/architecture\\.md`?\\)?,?\\s*\"([^\"]+)\"")

// outside are documents the repository must not point to: they are not
// in it.
var outside = regexp.MustCompile(`shared/DESIGN\.md|STYLE\.md|DESIGN(\.md)? ?§`)

// sections are the headings and bold run-in titles of the document.
func sections(doc string) []string {
	var out []string
	for _, line := range strings.Split(doc, "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			out = append(out, h)
		}
		if b, ok := strings.CutPrefix(strings.TrimSpace(line), "**"); ok {
			if title, _, ok := strings.Cut(b, "**"); ok {
				out = append(out, strings.TrimSuffix(title, "."))
			}
		}
	}
	return out
}

// resolves reports whether a reference names a section: a heading, or
// the start of a bold title.
func resolves(name string, secs []string) bool {
	for _, s := range secs {
		if s == name || strings.HasPrefix(s, name) {
			return true
		}
	}
	return false
}

// TestDocReferences: every reference to docs/architecture.md names a
// section it has, and nothing points at a document outside the
// repository.
func TestDocReferences(t *testing.T) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	must.NoError(t, err)
	root := filepath.Dir(strings.TrimSpace(string(out)))
	doc, err := os.ReadFile(filepath.Join(root, "docs", "architecture.md"))
	must.NoError(t, err)
	secs := sections(string(doc))
	must.SliceContains(t, secs, "Consul layout")
	must.SliceContains(t, secs, "FUSE settings, and why")

	files, err := exec.Command("git", "-C", root, "ls-files", "--cached", "--others", "--exclude-standard", "*.go", "*.md", "*.hcl", "Makefile").Output()
	must.NoError(t, err)
	checked := 0
	for _, f := range strings.Fields(string(files)) {
		data, err := os.ReadFile(filepath.Join(root, f))
		if os.IsNotExist(err) {
			continue // deleted in the work tree
		}
		must.NoError(t, err)
		// Comments broken over lines read as one.
		text := regexp.MustCompile(`\n\s*//\s*`).ReplaceAllString(string(data), " ")
		if f == "internal/layering/docrefs_test.go" {
			continue // its own examples
		}
		if m := outside.FindString(text); m != "" {
			t.Errorf("%s points at %q, which is not in the repository: point it at docs/architecture.md", f, m)
		}
		for _, m := range ref.FindAllStringSubmatch(text, -1) {
			checked++
			if !resolves(m[1], secs) {
				t.Errorf("%s refers to docs/architecture.md, %q, which is no section of it", f, m[1])
			}
		}
	}
	must.Greater(t, 10, checked, must.Sprint("the references were not found: the pattern is broken"))
}

// The checks above can fail.
func TestDocReferenceChecks(t *testing.T) {
	secs := sections("# T\n\n## Consul layout\n\n**FUSE settings, and why** (measured)\n")
	must.True(t, resolves("Consul layout", secs))
	must.True(t, resolves("FUSE settings", secs))
	must.False(t, resolves("Consul", secs[1:]))
	must.False(t, resolves("Data path", secs))
	m := ref.FindAllStringSubmatch(`(docs/architecture.md, "Data path") and (`+"`docs/architecture.md`"+`, "Volumes")`, -1)
	must.Len(t, 2, m)
	must.Eq(t, "Volumes", m[1][1])
	must.True(t, outside.MatchString("see ../shared/DESIGN.md"))
	must.True(t, outside.MatchString("(DESIGN §7)"))
	must.True(t, outside.MatchString("STYLE.md rule 3"))
}
