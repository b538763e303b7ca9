package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Image is a root file system made from this host's files for `docker
// import`: each file with the shared libraries it loads, plus files
// given by content.
type Image struct {
	Name string // name:tag
	// Files are host paths copied as they are (symbolic links kept, and
	// their targets copied too); a directory is copied whole.
	Files []string
	// Binaries are host executables (or shared objects) whose libraries,
	// as ldd lists them, are copied with them.
	Binaries []string
	// Content are files given by content (path -> data, mode 0644; a
	// path under /usr/local/bin or ending in .sh gets 0755).
	Content map[string][]byte
	// Changes are `docker import --change` instructions (ENTRYPOINT, ...).
	Changes []string
}

var lddPath = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// libraries lists the shared libraries bin loads (ldd's resolved paths).
func libraries(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", bin, err, out)
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := lddPath.FindStringSubmatch(sc.Text()); m != nil {
			libs = append(libs, m[1])
		}
	}
	return libs, sc.Err()
}

// WriteTar writes im's root file system as a tar stream. A path through
// a symbolic link (a merged-/usr host: /bin -> usr/bin) keeps the link,
// as a link, and the file goes where the link leads.
func (im Image) WriteTar(w io.Writer) error {
	tw := tar.NewWriter(w)
	done := map[string]bool{}
	rel := func(p string) string { return strings.TrimPrefix(p, "/") }
	// dirOf makes sure every component of the host directory dir is in
	// the image (directories as directories, links as links) and returns
	// where dir leads.
	var dirOf func(dir string) (string, error)
	dirOf = func(dir string) (string, error) {
		cur := "/"
		for _, comp := range strings.Split(strings.Trim(filepath.Clean(dir), "/"), "/") {
			if comp == "" {
				continue
			}
			next := filepath.Join(cur, comp)
			fi, err := os.Lstat(next)
			if err != nil {
				return "", err
			}
			if fi.Mode()&os.ModeSymlink != 0 {
				target, err := os.Readlink(next)
				if err != nil {
					return "", err
				}
				if !done[next] {
					done[next] = true
					if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: rel(next), Linkname: target, Mode: 0o777}); err != nil {
						return "", err
					}
				}
				if !filepath.IsAbs(target) {
					target = filepath.Join(cur, target)
				}
				if cur, err = dirOf(target); err != nil {
					return "", err
				}
				continue
			}
			if !done[next] {
				done[next] = true
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel(next) + "/", Mode: int64(fi.Mode().Perm())}); err != nil {
					return "", err
				}
			}
			cur = next
		}
		return cur, nil
	}
	var add func(path string) error
	add = func(path string) error {
		dir, err := dirOf(filepath.Dir(filepath.Clean(path)))
		if err != nil {
			return err
		}
		path = filepath.Join(dir, filepath.Base(path))
		if done[path] {
			return nil
		}
		done[path] = true
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: rel(path), Linkname: target, Mode: 0o777}); err != nil {
				return err
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(dir, target)
			}
			return add(target)
		case fi.IsDir():
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel(path) + "/", Mode: int64(fi.Mode().Perm())}); err != nil {
				return err
			}
			entries, err := os.ReadDir(path)
			if err != nil {
				return err
			}
			for _, e := range entries {
				if err := add(filepath.Join(path, e.Name())); err != nil {
					return err
				}
			}
			return nil
		case fi.Mode().IsRegular():
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel(path), Mode: int64(fi.Mode().Perm()), Size: fi.Size()}); err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			return err
		}
		return nil // devices, sockets: not in an image
	}
	for _, b := range im.Binaries {
		libs, err := libraries(b)
		if err != nil {
			return err
		}
		for _, p := range append([]string{b}, libs...) {
			if err := add(p); err != nil {
				return err
			}
		}
	}
	for _, p := range im.Files {
		if err := add(p); err != nil {
			return err
		}
	}
	paths := make([]string, 0, len(im.Content))
	for p := range im.Content {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		var parents []string
		for d := filepath.Dir(p); d != "/" && !done[d]; d = filepath.Dir(d) {
			parents = append(parents, d)
		}
		slices.Reverse(parents)
		for _, d := range parents {
			done[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel(d) + "/", Mode: 0o755}); err != nil {
				return err
			}
		}
		mode := int64(0o644)
		if strings.HasPrefix(p, "/usr/local/bin/") || strings.HasSuffix(p, ".sh") {
			mode = 0o755
		}
		data := im.Content[p]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(p, "/"), Mode: mode, Size: int64(len(data))}); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// Saddlebag is the docker form's saddlebag image made from this host's
// files: a static build of the binary (into binDir) at
// /usr/local/bin/saddlebag and the tools it runs (blkid, mkfs.ext4,
// mkfs.xfs, e2fsck), as jobs/docker/Dockerfile puts them in an image
// built from Debian's packages.
func Saddlebag(ctx context.Context, repoRoot, binDir, name string) (Image, error) {
	bin := filepath.Join(binDir, "saddlebag-static")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/saddlebag")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Image{}, fmt.Errorf("go build saddlebag (static): %w: %s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return Image{}, err
	}
	im := Image{Name: name,
		Content: map[string][]byte{"/usr/local/bin/saddlebag": data, "/etc/passwd": []byte("root:x:0:0:root:/root:/bin/sh\n"),
			"/tmp/.keep": nil},
		Changes: []string{`ENTRYPOINT ["/usr/local/bin/saddlebag"]`,
			"ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}
	for _, tool := range []string{"blkid", "mkfs.ext4", "mkfs.xfs", "e2fsck"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			return Image{}, fmt.Errorf("%s not found (run scripts/install-deps.sh): %w", tool, err)
		}
		im.Binaries = append(im.Binaries, p)
	}
	if _, err := os.Stat("/etc/mke2fs.conf"); err == nil {
		im.Files = append(im.Files, "/etc/mke2fs.conf")
	}
	return im, nil
}

// Postgres is an image with this host's Debian postgresql 15 server
// (what jobs/examples/postgres-docker.nomad.hcl needs): the server's
// files, /bin/sh, the coreutils the job's script runs, setpriv, time
// zones, and the host's postgres user.
func Postgres(name string) (Image, error) {
	const pg = "/usr/lib/postgresql/15"
	im := Image{Name: name, Files: []string{"/usr/share/postgresql/15", "/usr/share/zoneinfo", "/bin/sh"},
		Content: map[string][]byte{"/tmp/.keep": nil},
		Changes: []string{"ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}
	for _, tool := range []string{"sh", "mkdir", "chown", "chmod", "rm", "mv", "sync", "cat", "setpriv"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			return Image{}, fmt.Errorf("%s not found: %w", tool, err)
		}
		im.Binaries = append(im.Binaries, p)
	}
	for _, pattern := range []string{pg + "/bin/*", pg + "/lib/*.so"} {
		matches, err := filepath.Glob(pattern)
		if err != nil {
			return Image{}, err
		}
		if len(matches) == 0 {
			return Image{}, fmt.Errorf("no %s: install Debian's postgresql package (scripts/install-deps.sh)", pattern)
		}
		im.Binaries = append(im.Binaries, matches...)
	}
	// root and postgres, as the host has them (the volume's files carry
	// these ids).
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		b, err := os.ReadFile(f)
		if err != nil {
			return Image{}, err
		}
		var keep []string
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "root:") || strings.HasPrefix(line, "postgres:") {
				keep = append(keep, line)
			}
		}
		im.Content[f] = []byte(strings.Join(keep, "\n") + "\n")
	}
	return im, nil
}
