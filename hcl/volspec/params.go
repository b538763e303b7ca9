package volspec

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/saddlebag/saddlebag/hcl/internal/hclutil"
)

// Saddlebag's own keys in a volume's parameters (the spec file's
// parameters block, CreateVolume's parameters map).
const (
	ParamReplicas  = "replicas"
	ParamFSType    = "fs_type"
	ParamSpread    = "spread"
	ParamMinInSync = "min_in_sync"
	ParamEncrypted = "encrypted"
)

// SecretPassphrase is the key, in a volume's secrets, of the passphrase
// an encrypted volume's data key is sealed under. Nomad passes a volume's
// secrets to CreateVolume, NodeStageVolume and NodePublishVolume.
const SecretPassphrase = "encryption_passphrase"

// Passphrase length bounds, in bytes (internal/volkey enforces the same).
const (
	MinPassphrase = 8
	MaxPassphrase = 1024
)

// KnownParams lists Saddlebag's parameter keys in the order they are
// documented and reported.
var KnownParams = []string{ParamReplicas, ParamFSType, ParamSpread, ParamMinInSync, ParamEncrypted}

// Limits and defaults of the parameters (docs/architecture.md, "Volumes" and "Data path").
const (
	MinReplicas      = 1
	MaxReplicas      = 5
	DefaultReplicas  = 2
	DefaultMinInSync = 1
	DefaultFSType    = "ext4"
)

// FSTypes are the file systems Saddlebag formats and mounts.
var FSTypes = []string{"ext4", "xfs"}

// Params are Saddlebag's parameters of one volume, checked and with
// defaults filled in.
type Params struct {
	// Replicas is how many copies the volume keeps, on distinct nodes:
	// MinReplicas..MaxReplicas, DefaultReplicas when not given.
	Replicas int
	// FSType is the file system asked for in the parameters, "" when not
	// given; ResolveFSType combines it with the mount capability's fs_type.
	FSType string
	// Spread is the node label (rack, zone, ...) whose values the replicas
	// are spread across, "" when not given.
	Spread string
	// MinInSync is how many replicas must hold every write before writes
	// block rather than run with less redundancy: 1..Replicas,
	// DefaultMinInSync when not given.
	MinInSync int
	// Encrypted asks for encryption at rest: the primary encrypts every
	// block (AES-256-XTS) under a data key sealed by the volume's
	// SecretPassphrase. Written "true" or "false" ("1" and "0", as Nomad
	// sends an HCL bool); false when not given.
	Encrypted bool
}

// ParamProblem is one bad parameter.
type ParamProblem struct {
	Key     string // the parameter's key, e.g. "replicas"
	Value   string // the value given
	Message string // what is wrong and what would be valid
}

// ParamsError lists every bad parameter of a volume; branch on it with
// errors.As. Parameter values are not secret (secrets travel apart), so
// the error may be logged and returned to the caller as it is.
type ParamsError struct {
	Problems []ParamProblem
}

func (e *ParamsError) Error() string {
	var b strings.Builder
	b.WriteString("invalid volume parameters: ")
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s = %q: %s", p.Key, p.Value, p.Message)
	}
	return b.String()
}

// ParseParams reads Saddlebag's parameters from a volume's parameters
// map, as CreateVolume receives it. Keys it does not know are left for
// the caller (see UnknownParams). Every bad value is reported in one
// *ParamsError.
func ParseParams(m map[string]string) (Params, error) {
	p, problems := checkParams(m)
	if len(problems) > 0 {
		return Params{}, &ParamsError{Problems: problems}
	}
	return p, nil
}

// UnknownParams returns the keys of m that are none of KnownParams,
// sorted. They are not errors: Nomad passes the whole map to the plugin.
func UnknownParams(m map[string]string) []string {
	var out []string
	for k := range m {
		if !slices.Contains(KnownParams, k) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// ResolveFSType decides the file system of a volume from its parameters
// and the fs_type of its mount capability (mount_options in a spec file;
// VolumeCapability.Mount.FsType in CSI), either of which may be empty:
// the one given, DefaultFSType when neither is, and an error (a
// *ParamsError) when they differ or the capability asks for a file system
// Saddlebag cannot make.
func (p Params) ResolveFSType(mountFSType string) (string, error) {
	switch {
	case mountFSType != "" && !slices.Contains(FSTypes, mountFSType):
		return "", &ParamsError{Problems: []ParamProblem{{
			Key: ParamFSType, Value: mountFSType, Message: fsTypeMessage("the mount fs_type"),
		}}}
	case mountFSType != "" && p.FSType != "" && mountFSType != p.FSType:
		return "", &ParamsError{Problems: []ParamProblem{{
			Key: ParamFSType, Value: p.FSType,
			Message: fmt.Sprintf("the fs_type parameter (%s) and the mount fs_type (%s) differ: give one, or the same in both", p.FSType, mountFSType),
		}}}
	case p.FSType != "":
		return p.FSType, nil
	case mountFSType != "":
		return mountFSType, nil
	}
	return DefaultFSType, nil
}

func fsTypeMessage(what string) string {
	return fmt.Sprintf("%s must be %s", what, hclutil.List(FSTypes, false))
}

// checkParams parses the known parameters, returning every problem in
// KnownParams order.
func checkParams(m map[string]string) (Params, []ParamProblem) {
	p := Params{Replicas: DefaultReplicas, MinInSync: DefaultMinInSync}
	var problems []ParamProblem
	bad := func(key, msg string) {
		problems = append(problems, ParamProblem{Key: key, Value: m[key], Message: msg})
	}

	replicasOK := true
	if v, ok := m[ParamReplicas]; ok {
		n, ok := wholeNumber(v)
		if !ok || n < MinReplicas || n > MaxReplicas {
			bad(ParamReplicas, fmt.Sprintf("replicas must be a whole number from %d to %d in plain digits, like %q", MinReplicas, MaxReplicas, "2"))
			replicasOK = false
		} else {
			p.Replicas = n
		}
	}
	if v, ok := m[ParamFSType]; ok {
		if slices.Contains(FSTypes, v) {
			p.FSType = v
		} else {
			bad(ParamFSType, fsTypeMessage("fs_type"))
		}
	}
	if v, ok := m[ParamSpread]; ok {
		if hclutil.ValidLabelKey(v) {
			p.Spread = v
		} else {
			bad(ParamSpread, "spread must name a node label such as rack or zone: "+hclutil.LabelKeyRule)
		}
	}
	if v, ok := m[ParamMinInSync]; ok {
		n, ok := wholeNumber(v)
		switch {
		case !ok || n < 1 || n > MaxReplicas:
			bad(ParamMinInSync, `min_in_sync must be a whole number from 1 to replicas in plain digits, like "1"`)
		case replicasOK && n > p.Replicas:
			bad(ParamMinInSync, fmt.Sprintf("min_in_sync must be a whole number from 1 to replicas (%d)", p.Replicas))
		default:
			p.MinInSync = n
		}
	}
	if v, ok := m[ParamEncrypted]; ok {
		switch v {
		case "true", "1":
			p.Encrypted = true
		case "false", "0":
		default:
			bad(ParamEncrypted, `encrypted must be true or false (as Nomad sends a bool, "1" or "0")`)
		}
	}
	return p, problems
}

// EncryptionProblem says what is wrong with a volume's encryption
// settings: its encrypted parameter and the SecretPassphrase among its
// secrets. It returns the field at fault ("parameters.encrypted" or
// "secrets.encryption_passphrase") and a message that never quotes the
// secret, or "" and "" when nothing is wrong.
func EncryptionProblem(p Params, secrets map[string]string) (field, message string) {
	pass, has := secrets[SecretPassphrase]
	switch {
	case p.Encrypted && !has:
		return "parameters." + ParamEncrypted, "encrypted = true needs the secret " + SecretPassphrase +
			`: add secrets { ` + SecretPassphrase + ` = "..." } to the volume (Nomad passes it to the plugin at create and at every stage)`
	case !p.Encrypted && has:
		return "secrets." + SecretPassphrase, "the secret " + SecretPassphrase + " is set but the parameter encrypted is not true: " +
			"set encrypted = true to encrypt the volume, or remove the secret"
	case has && len(pass) < MinPassphrase:
		return "secrets." + SecretPassphrase, fmt.Sprintf("%s must be at least %d bytes", SecretPassphrase, MinPassphrase)
	case has && len(pass) > MaxPassphrase:
		return "secrets." + SecretPassphrase, fmt.Sprintf("%s must be at most %d bytes", SecretPassphrase, MaxPassphrase)
	case has && !utf8.ValidString(pass):
		return "secrets." + SecretPassphrase, SecretPassphrase + " must be UTF-8 text"
	}
	return "", ""
}

// wholeNumber parses a decimal number of plain digits: no sign, no
// spaces, no fraction, no exponent, no leading zero ("02" is not how
// anyone writes 2, and other tools read it as octal).
func wholeNumber(s string) (int, bool) {
	if s == "" || len(s) > 9 || len(s) > 1 && s[0] == '0' {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}
