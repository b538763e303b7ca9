package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/nomad/api"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/internal/units"
)

func init() {
	register("volume", "validate volume spec files (validate FILE...), create a volume through Nomad (create FILE), or add and remove an encrypted volume's passphrases (passphrase add|remove VOLUME_ID)", runVolume)
}

const volumeUsage = `usage:
  saddlebag volume validate FILE...
      check volume spec files; prints FILE:LINE,COL: message per problem and exits 1 if any
  saddlebag volume create FILE [--address NOMAD_ADDR] [--token TOKEN]
      validate FILE, then create the volume through Nomad's API (like nomad volume create)
  saddlebag volume passphrase add|remove VOLUME_ID [--consul-addr ADDR]
      add or remove an encrypted volume's passphrase (read from standard input)
FILE "-" reads standard input.`

func runVolume(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usageError{errors.New("want a subcommand: validate FILE..., create FILE or passphrase add|remove VOLUME_ID")}
	}
	switch args[0] {
	case "validate":
		return volumeValidate(args[1:], os.Stdin, os.Stdout, os.Stderr)
	case "create":
		return volumeCreate(ctx, args[1:], os.Stdin, os.Stdout, os.Stderr)
	case "passphrase":
		return volumePassphrase(ctx, args[1:], os.Stdin, os.Stdout)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(os.Stderr, volumeUsage)
		return flag.ErrHelp
	}
	return usageError{fmt.Errorf("unknown subcommand %q: want validate, create or passphrase", args[0])}
}

// problemsError says how many problems were printed; the lines themselves
// went to stderr.
type problemsError struct{ problems, files int }

func (e problemsError) Error() string {
	return fmt.Sprintf("%d %s in %d %s", e.problems, plural(e.problems, "problem"), e.files, plural(e.files, "file"))
}

func plural(n int, s string) string {
	if n == 1 {
		return s
	}
	return s + "s"
}

func volumeValidate(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("volume validate")
	files, err := parseInterspersed(fs, args, volumeUsage)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return usageError{errors.New("want one or more volume spec files")}
	}
	var bad problemsError
	for _, file := range files {
		spec, diags := readSpec(file, stdin)
		printDiags(stderr, diags)
		if n := len(diags.Errs()); n > 0 {
			bad.problems += n
			bad.files++
			continue
		}
		if file == "-" {
			file = stdinName
		}
		fmt.Fprintf(stdout, "%s: ok: %s\n", file, describe(spec))
	}
	if bad.problems > 0 {
		return bad
	}
	return nil
}

func readSpec(file string, stdin io.Reader) (*volspec.Spec, hcl.Diagnostics) {
	if file != "-" {
		return volspec.ParseFile(file)
	}
	src, err := io.ReadAll(stdin)
	if err != nil {
		return nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "cannot read standard input", Detail: err.Error()}}
	}
	return volspec.Parse(stdinName, src)
}

// stdinName stands for standard input in messages.
const stdinName = "<stdin>"

// describe sums up a valid spec in one line.
func describe(s *volspec.Spec) string {
	var mountFS string
	if s.MountOptions != nil {
		mountFS = s.MountOptions.FSType
	}
	fsType, _ := s.Params.ResolveFSType(mountFS) // valid specs resolve
	if !slices.ContainsFunc(s.Capabilities, func(c volspec.Capability) bool { return c.AttachmentMode == "file-system" }) {
		fsType = "raw block device"
	}
	size := "plugin's default size"
	switch {
	case s.CapacityMin != 0 && s.CapacityMin == s.CapacityMax:
		size = units.FormatBytes(s.CapacityMin)
	case s.CapacityMin != 0 || s.CapacityMax != 0:
		size = fmt.Sprintf("%s to %s", sizeOrAny(s.CapacityMin, "0"), sizeOrAny(s.CapacityMax, "any"))
	}
	out := fmt.Sprintf("volume %q, plugin %q, %s, %d %s (min_in_sync %d), %s", s.ID, s.PluginID, size,
		s.Params.Replicas, plural(s.Params.Replicas, "replica"), s.Params.MinInSync, fsType)
	if s.Params.Spread != "" {
		out += ", spread across " + s.Params.Spread
	}
	if s.Params.Encrypted {
		out += ", encrypted (AES-256-XTS, key sealed by secrets." + volspec.SecretPassphrase + ")"
	}
	return out
}

func sizeOrAny(n int64, zero string) string {
	if n == 0 {
		return zero
	}
	return units.FormatBytes(n)
}

func volumeCreate(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("volume create")
	address := fs.String("address", "", "Nomad HTTP API address (default: $NOMAD_ADDR or http://127.0.0.1:4646)")
	token := fs.String("token", "", "Nomad ACL token (default: $NOMAD_TOKEN)")
	files, err := parseInterspersed(fs, args, volumeUsage)
	if err != nil {
		return err
	}
	if len(files) != 1 {
		return usageError{errors.New("want exactly one volume spec file")}
	}
	spec, diags := readSpec(files[0], stdin)
	printDiags(stderr, diags)
	if n := len(diags.Errs()); n > 0 {
		return fmt.Errorf("nothing created: %w", problemsError{problems: n, files: 1})
	}

	cfg := api.DefaultConfig() // NOMAD_ADDR, NOMAD_TOKEN, NOMAD_NAMESPACE, NOMAD_CACERT, ...
	if *address != "" {
		cfg.Address = *address
	}
	if *token != "" {
		cfg.SecretID = *token
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return fmt.Errorf("nomad client: %w", err)
	}
	vols, _, err := client.CSIVolumes().Create(nomadVolume(spec), (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nomadError(cfg.Address, spec.ID, err)
	}
	for _, v := range vols {
		fmt.Fprintf(stdout, "Created external volume %s with ID %s\n", v.ExternalID, v.ID)
	}
	return nil
}

// nomadError tells an unreachable Nomad from one that refused the volume.
func nomadError(addr, id string, err error) error {
	var refused api.UnexpectedResponseError
	var netErr net.Error
	var urlErr *url.Error
	switch {
	case errors.As(err, &refused):
		return fmt.Errorf("nomad refused volume %q: %w", id, err)
	case errors.As(err, &netErr), errors.As(err, &urlErr):
		return fmt.Errorf("cannot reach Nomad at %s (set --address or $NOMAD_ADDR): %w", addr, err)
	}
	return fmt.Errorf("create volume %q through Nomad at %s: %w", id, addr, err)
}

// nomadVolume is the volume as `nomad volume create` sends it.
func nomadVolume(s *volspec.Spec) *api.CSIVolume {
	v := &api.CSIVolume{
		ID: s.ID, Name: s.Name, Namespace: s.Namespace, PluginID: s.PluginID,
		RequestedCapacityMin: s.CapacityMin, RequestedCapacityMax: s.CapacityMax,
		SnapshotID: s.SnapshotID, CloneID: s.CloneID,
	}
	for _, c := range s.Capabilities {
		v.RequestedCapabilities = append(v.RequestedCapabilities, &api.CSIVolumeCapability{
			AccessMode: api.CSIVolumeAccessMode(c.AccessMode), AttachmentMode: api.CSIVolumeAttachmentMode(c.AttachmentMode),
		})
	}
	if m := s.MountOptions; m != nil {
		v.MountOptions = &api.CSIMountOptions{FSType: m.FSType, MountFlags: m.MountFlags}
	}
	if t := s.TopologyRequest; t != nil {
		v.RequestedTopologies = &api.CSITopologyRequest{Required: topologies(t.Required), Preferred: topologies(t.Preferred)}
	}
	if len(s.Secrets) > 0 {
		v.Secrets = api.CSISecrets(s.Secrets)
	}
	if len(s.Parameters) > 0 {
		v.Parameters = s.Parameters
	}
	return v
}

func topologies(ts []volspec.Topology) []*api.CSITopology {
	var out []*api.CSITopology
	for _, t := range ts {
		out = append(out, &api.CSITopology{Segments: t.Segments})
	}
	return out
}

// parseInterspersed parses fs's flags wherever they stand among args
// (`create FILE --address X` as well as `create --address X FILE`) and
// returns the other arguments; everything after "--" is an argument.
// usage heads the help text -h prints.
func parseInterspersed(fs *flag.FlagSet, args []string, usage string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(os.Stderr)
				fmt.Fprintf(os.Stderr, "%s\n\nflags of %s:\n", usage, fs.Name())
				fs.PrintDefaults()
				return nil, err
			}
			return nil, usageError{err}
		}
		consumed := len(args) - fs.NArg()
		if consumed > 0 && args[consumed-1] == "--" {
			return append(rest, fs.Args()...), nil
		}
		if fs.NArg() == 0 {
			return rest, nil
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
