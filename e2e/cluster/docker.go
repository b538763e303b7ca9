package cluster

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
	"strconv"
	"strings"
	"time"

	"github.com/saddlebag/saddlebag/internal/testcluster"
)

// The docker form (issue 15): with Options.Docker every node runs its own
// dockerd inside its network namespace, so that a container started with
// network_mode = "host" has the node's address, reaches the node's Consul
// agent on loopback, and dies with the node when the harness kills it.
// No registry is reachable from here, so images are made from this host's
// own files (installed from Debian's packages) with `docker import`.
//
// dockerd runs with --iptables=false, --ip-forward=false and
// --bridge=none: it never touches the host's firewall (a default dockerd
// sets the FORWARD policy to DROP, which cuts the cluster's bridge) and
// creates no network; every container uses its node's.

// makeShared makes dir a shared mount point (a bind mount of itself), as
// / is on a systemd host: Nomad mounts a CSI plugin's directory into its
// container with bidirectional propagation, which docker refuses on a
// private mount ("is mounted on / but it is not a shared mount").
// Teardown unmounts it with everything under the cluster's directory.
func makeShared(ctx context.Context, dir string) error {
	if _, err := run(ctx, "mount", "--bind", dir, dir); err != nil {
		return err
	}
	_, err := run(ctx, "mount", "--make-rshared", dir)
	return err
}

// dockerSocket is node nd's dockerd API socket.
func (nd *Node) dockerSocket() string { return filepath.Join(nd.Dir, "docker", "docker.sock") }

// DockerHost is the DOCKER_HOST of node nd's dockerd ("" without Options.Docker).
func (nd *Node) DockerHost() string {
	if nd.Docker == nil {
		return ""
	}
	return "unix://" + nd.dockerSocket()
}

// capsRuntime builds, when this host's capability bounding set lacks
// some capability, the OCI runtime wrapper e2e/cmd/capsrunc into the
// cluster's directory and returns its path ("" when the set is full).
// dockerd cannot start privileged containers there otherwise: runc
// fails with "unable to apply caps: operation not permitted" (this
// project's CI sandbox lacks CAP_SYS_RESOURCE).
func (c *Cluster) capsRuntime(ctx context.Context) (string, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "", err
	}
	last, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(last)))
	if err != nil {
		return "", err
	}
	full := uint64(1)<<(n+1) - 1
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return "", err
			}
			if mask&full == full {
				return "", nil
			}
			c.logf("e2e cluster %d: capability bounding set %x lacks %x: dockerd runs runc through e2e/cmd/capsrunc", c.Instance, mask, full&^mask)
		}
	}
	bin := filepath.Join(c.Dir, "bin", "capsrunc")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/saddlebag/saddlebag/e2e/cmd/capsrunc")
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build capsrunc: %w: %s", err, out)
	}
	return bin, nil
}

// newDockerd makes node nd's dockerd process (not started); runtime is
// capsRuntime's wrapper, or "" for runc itself.
func (nd *Node) newDockerd(cgroupParent, runtime string, detach bool) *Process {
	dir := filepath.Join(nd.Dir, "docker")
	argv := []string{"dockerd",
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"--host", "unix://" + nd.dockerSocket(),
		"--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none",
		// Containers under the node's cgroup parent: teardown removes it.
		"--cgroup-parent", "/" + cgroupParent + "/docker",
	}
	if runtime != "" {
		argv = append(argv, "--add-runtime", "capsrunc="+runtime, "--default-runtime", "capsrunc")
	}
	return testcluster.NewProcess(nd.Name+"-dockerd", nd.wrap(), argv, agentEnv(), filepath.Join(dir, "dockerd.log"), detach)
}

// startDockerd starts node nd's dockerd and waits until it answers.
func (nd *Node) startDockerd(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Join(nd.Dir, "docker"), 0o711); err != nil {
		return err
	}
	if err := nd.c.startRecorded(nd.Docker); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		out, err := nd.DockerCLI(ctx, "version", "--format", "{{.Server.Version}}")
		if err == nil {
			nd.c.logf("e2e cluster %d: %s: dockerd %s", nd.c.Instance, nd.Name, strings.TrimSpace(out))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: dockerd not answering: %v: %s\n%s", nd.Name, err, out, nd.Docker.LogTail(20))
		case <-nd.Docker.Exited():
			return fmt.Errorf("%s: dockerd exited:\n%s", nd.Name, nd.Docker.LogTail(20))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// DockerCLI runs the docker client against node nd's dockerd.
func (nd *Node) DockerCLI(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", append([]string{"--host", "unix://" + nd.dockerSocket()}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

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

// writeTar writes im's root file system as a tar stream. A path through
// a symbolic link (a merged-/usr host: /bin -> usr/bin) keeps the link,
// as a link, and the file goes where the link leads.
func (im Image) writeTar(w io.Writer) error {
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

// ImportImage makes im and imports it into every node's dockerd.
func (c *Cluster) ImportImage(ctx context.Context, im Image) error {
	path := filepath.Join(c.Dir, "images", strings.ReplaceAll(im.Name, ":", "_")+".tar")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := im.writeTar(f); err != nil {
		f.Close()
		return fmt.Errorf("image %s: %w", im.Name, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	for _, nd := range c.Nodes {
		args := []string{"import"}
		for _, ch := range im.Changes {
			args = append(args, "--change", ch)
		}
		args = append(args, path, im.Name)
		if out, err := nd.DockerCLI(ctx, args...); err != nil {
			return fmt.Errorf("%s: docker import %s: %w: %s", nd.Name, im.Name, err, out)
		}
	}
	return nil
}

// SaddlebagImage is the docker form's saddlebag image made from this
// host's files: a static build of the binary at /usr/local/bin/saddlebag
// and the tools it runs (blkid, mkfs.ext4, mkfs.xfs, e2fsck), as
// jobs/docker/Dockerfile puts them in an image built from Debian's
// packages.
func (c *Cluster) SaddlebagImage(ctx context.Context, repoRoot, name string) (Image, error) {
	bin := filepath.Join(c.Dir, "bin", "saddlebag-static")
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

// PostgresImage is an image with this host's Debian postgresql 15 server
// (what jobs/examples/postgres-docker.nomad.hcl needs): the server's
// files, /bin/sh, the coreutils the job's script runs, setpriv, time
// zones, and the host's postgres user.
func PostgresImage(name string) (Image, error) {
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
