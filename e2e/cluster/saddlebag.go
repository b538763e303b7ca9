package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
)

// PluginID is the CSI plugin ID the Saddlebag jobs register.
const PluginID = "saddlebag"

// ControllerCount is how many controller instances DeploySaddlebag runs:
// the job's default, one active and one standby (which forwards mutating
// calls to the active one).
const ControllerCount = 2

// BuildSaddlebag builds the saddlebag binary from the module at repoRoot
// into the cluster's directory and returns its path. The raw_exec jobs
// run it from there on every node (one host), so teardown removes it.
func (c *Cluster) BuildSaddlebag(ctx context.Context, repoRoot string) (string, error) {
	bin := filepath.Join(c.Dir, "bin", "saddlebag")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/saddlebag")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build saddlebag: %w: %s", err, out)
	}
	return bin, nil
}

// NodeJobVars are the -var arguments for jobs/saddlebag-node.nomad.hcl on
// this cluster: the binary, and every directory under the node's own
// directory in the cluster's (${node.unique.name} is the node's name), so
// that teardown finds the replicas, FUSE mounts and loop devices. Each
// node is labelled rack=<its name> so that specs spreading over racks
// place.
func (c *Cluster) NodeJobVars(bin string) []string {
	node := filepath.Join(c.Dir, "${node.unique.name}")
	c.mu.Lock()
	token := c.tokens["saddlebag-node"]
	c.mu.Unlock()
	return []string{
		"-var", "consul_token=" + token,
		"-var", "binary=" + bin,
		"-var", "data_dir=" + filepath.Join(node, "saddlebag"),
		"-var", "run_dir=" + filepath.Join(node, "run"),
		"-var", "nomad_data_dir=" + filepath.Join(node, "nomad"),
		"-var", `extra_args=["--label", "rack=$${node.unique.name}"]`,
	}
}

// KeeperJobVars are the -var arguments for
// jobs/saddlebag-keeper.nomad.hcl on this cluster (its run_dir is the
// node job's).
func (c *Cluster) KeeperJobVars(bin string) []string {
	return []string{"-var", "binary=" + bin, "-var", "run_dir=" + filepath.Join(c.Dir, "${node.unique.name}", "run")}
}

// ControllerJobVars are the -var arguments for
// jobs/saddlebag-controller.nomad.hcl on this cluster.
func (c *Cluster) ControllerJobVars(bin string) []string {
	c.mu.Lock()
	token := c.tokens["saddlebag-controller"]
	c.mu.Unlock()
	return []string{"-var", "binary=" + bin, "-var", fmt.Sprintf("count=%d", ControllerCount), "-var", "consul_token=" + token}
}

// SaddlebagTokens creates, once, a Consul token of each policy shipped in
// repoRoot/jobs/acl (saddlebag-node, saddlebag-controller,
// saddlebag-operator), as an operator would, and returns them by policy
// name; the job vars pass the first two to the jobs.
func (c *Cluster) SaddlebagTokens(repoRoot string) (map[string]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tokens != nil {
		return c.tokens, nil
	}
	capi, err := c.ConsulClient()
	if err != nil {
		return nil, err
	}
	tokens := map[string]string{}
	for _, name := range []string{"saddlebag-node", "saddlebag-controller", "saddlebag-operator"} {
		rules, err := os.ReadFile(filepath.Join(repoRoot, "jobs", "acl", name+".policy.hcl"))
		if err != nil {
			return nil, err
		}
		p, _, err := capi.ACL().PolicyReadByName(name, nil)
		if err != nil {
			return nil, fmt.Errorf("read policy %s: %w", name, err)
		}
		if p == nil {
			if p, _, err = capi.ACL().PolicyCreate(&consulapi.ACLPolicy{Name: name, Rules: string(rules)}, nil); err != nil {
				return nil, fmt.Errorf("create policy %s: %w", name, err)
			}
		}
		tok, _, err := capi.ACL().TokenCreate(&consulapi.ACLToken{Description: name, Policies: []*consulapi.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
		if err != nil {
			return nil, fmt.Errorf("create token of %s: %w", name, err)
		}
		tokens[name] = tok.SecretID
	}
	c.tokens = tokens
	return tokens, nil
}

// DeploySaddlebag creates Consul tokens of the policies shipped in
// jobs/acl, installs the intentions Saddlebag's mutual TLS needs
// (`saddlebag setup-intentions`, with the operator policy's token) and
// runs both Saddlebag jobs (with the node's and controller's tokens) from
// repoRoot/jobs with `nomad job run`, as an operator would, and waits
// until the plugin is healthy on every node and in ControllerCount
// controllers.
func (c *Cluster) DeploySaddlebag(ctx context.Context, repoRoot, bin string) error {
	tokens, err := c.SaddlebagTokens(repoRoot)
	if err != nil {
		return err
	}
	out, err := c.SetupIntentions(ctx, bin, tokens["saddlebag-operator"])
	if err != nil {
		return err
	}
	c.logf("%s", strings.TrimSpace(out))
	jobs := filepath.Join(repoRoot, "jobs")
	// The descriptor keeper first, so that the node parks every volume
	// from its first stage.
	if out, err := c.NomadCLI(ctx, append(append([]string{"job", "run", "-detach"}, c.KeeperJobVars(bin)...),
		filepath.Join(jobs, "saddlebag-keeper.nomad.hcl"))...); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	if out, err := c.NomadCLI(ctx, append(append([]string{"job", "run", "-detach"}, c.NodeJobVars(bin)...),
		filepath.Join(jobs, "saddlebag-node.nomad.hcl"))...); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	if out, err := c.NomadCLI(ctx, append(append([]string{"job", "run", "-detach"}, c.ControllerJobVars(bin)...),
		filepath.Join(jobs, "saddlebag-controller.nomad.hcl"))...); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	return c.WaitPlugin(ctx, ControllerCount, len(c.Nodes))
}

// SetupIntentions runs `saddlebag setup-intentions` against the
// cluster's Consul with token and returns its output.
func (c *Cluster) SetupIntentions(ctx context.Context, bin, token string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, "setup-intentions", "--consul-addr", c.ConsulAddr, "--consul-token", token)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("saddlebag setup-intentions: %w: %s", err, out)
	}
	return string(out), nil
}

// WaitPlugin waits until Nomad reports the Saddlebag plugin healthy in
// controllers controllers and nodes nodes.
func (c *Cluster) WaitPlugin(ctx context.Context, controllers, nodes int) error {
	api, err := c.Nomad()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	last := "not registered"
	for {
		p, _, err := api.CSIPlugins().Info(PluginID, (&nomadapi.QueryOptions{}).WithContext(ctx))
		if err == nil {
			if p.ControllersHealthy >= controllers && p.NodesHealthy >= nodes {
				return nil
			}
			last = fmt.Sprintf("controllers healthy %d/%d, nodes healthy %d/%d", p.ControllersHealthy, controllers, p.NodesHealthy, nodes)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("plugin %s not healthy: %s: %w", PluginID, last, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// PrimaryNode returns the name of the node holding volume's primary lease
// (Consul KV saddlebag/volumes/<volume>/primary, locked by that node's
// session), or "" when nobody holds it.
func PrimaryNode(ctx context.Context, capi *consulapi.Client, volume string) (string, error) {
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	kv, _, err := capi.KV().Get("saddlebag/volumes/"+volume+"/primary", q)
	if err != nil || kv == nil || kv.Session == "" {
		return "", err
	}
	se, _, err := capi.Session().Info(kv.Session, q)
	if err != nil || se == nil {
		return "", err
	}
	return se.Node, nil
}

// ErrNoNode is returned for a node name the instance does not have.
var ErrNoNode = errors.New("no such node")

// KillNode SIGKILLs every process of node name (1-based position in
// Namespaces, "node<i>") of an instance known only from its state file,
// as Node.Kill does; it returns the moment the signals went out.
func (s *State) KillNode(name string) (time.Time, error) {
	for i, ns := range s.Namespaces {
		if fmt.Sprintf("node%d", i+1) == name {
			t0 := time.Now()
			return t0, killNetns(ns, 10*time.Second)
		}
	}
	return time.Time{}, fmt.Errorf("%w: %s", ErrNoNode, name)
}
