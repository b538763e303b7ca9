package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/saddlebag/saddlebag/e2e/cluster/image"
	"github.com/saddlebag/saddlebag/internal/testcluster"
)

// The docker form (issue 15): with Options.Docker every node runs its own
// dockerd inside its network namespace, so that a container started with
// network_mode = "host" has the node's address, reaches the node's Consul
// agent on loopback, and dies with the node when the harness kills it.
// No registry is reachable from here, so images are made from this host's
// own files (installed from Debian's packages, e2e/cluster/image) and
// loaded with `docker import` (ImportImage).
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

// ImportImage makes im and imports it into every node's dockerd.
func (c *Cluster) ImportImage(ctx context.Context, im image.Image) error {
	path := filepath.Join(c.Dir, "images", strings.ReplaceAll(im.Name, ":", "_")+".tar")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := im.WriteTar(f); err != nil {
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
