package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoenig/test/must"
)

// TestImageHoldsWhatItsBinariesLoad: the postgres image's tar holds the
// server, the libraries ldd names for it, /bin/sh reachable through the
// host's links, and the postgres user; nothing is there twice.
func TestImageHoldsWhatItsBinariesLoad(t *testing.T) {
	if _, err := os.Stat("/usr/lib/postgresql/15/bin/postgres"); err != nil {
		t.Skip("Debian's postgresql 15 is not installed (scripts/install-deps.sh)")
	}
	im, err := Postgres("test:1")
	must.NoError(t, err)
	var buf bytes.Buffer
	must.NoError(t, im.WriteTar(&buf))
	entries := map[string]*tar.Header{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		must.NoError(t, err)
		_, dup := entries[h.Name]
		must.False(t, dup, must.Sprintf("%s twice", h.Name))
		entries[h.Name] = h
	}
	// resolve follows the image's own links to the entry a path names.
	var resolve func(p string, depth int) *tar.Header
	resolve = func(p string, depth int) *tar.Header {
		must.Less(t, 40, depth, must.Sprintf("link loop at %s", p))
		dir, base := filepath.Dir(p), filepath.Base(p)
		if dir != "." && dir != "/" {
			dh := resolve(dir, depth+1)
			if dh == nil {
				return nil
			}
			dir = filepath.Clean(dh.Name)
		}
		name := filepath.Join(dir, base)
		h := entries[name]
		if h == nil {
			h = entries[name+"/"]
		}
		if h != nil && h.Typeflag == tar.TypeSymlink {
			target := h.Linkname
			if !filepath.IsAbs(target) {
				target = filepath.Join("/", filepath.Dir(name), target)
			}
			return resolve(filepath.Clean(target)[1:], depth+1)
		}
		return h
	}
	for _, p := range []string{"bin/sh", "usr/lib/postgresql/15/bin/postgres", "usr/lib/postgresql/15/bin/initdb", "etc/passwd"} {
		h := resolve(p, 0)
		must.NotNil(t, h, must.Sprintf("%s not in the image", p))
		must.Eq(t, tar.TypeReg, rune(h.Typeflag), must.Sprintf("%s", p))
	}
	libs, err := libraries("/usr/lib/postgresql/15/bin/postgres")
	must.NoError(t, err)
	must.Positive(t, len(libs))
	for _, l := range libs {
		must.NotNil(t, resolve(l[1:], 0), must.Sprintf("library %s not in the image", l))
	}
}
