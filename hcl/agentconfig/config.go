package agentconfig

import (
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/saddlebag/saddlebag/hcl/internal/hclutil"
)

// Config is an agent config file, decoded and checked. A zero field means
// the file did not set it; Settings says which ones it did.
type Config struct {
	Name          string // node name
	LogLevel      string // one of LogLevels
	CSIEndpoint   string // unix:///path, /path or tcp://host:port
	DataDir       string // node: the directory holding replicas
	BindAddr      string // node: host:port the replica server listens on
	AdvertiseAddr string // node: host:port other nodes reach it at
	LockDelay     time.Duration
	TTL           time.Duration
	Labels        map[string]string // failure-domain labels, e.g. rack = "r1"
	Consul        Consul
	Controller    Controller

	settings []Setting
}

// Consul is the consul block: how the agent reaches Consul.
type Consul struct {
	Address       string
	Token         string
	CAFile        string
	CertFile      string
	KeyFile       string
	TLSServerName string
	KVPrefix      string
}

// Controller is the controller block, read by `saddlebag controller` only.
type Controller struct {
	// ReplicaGracePeriod is how long a replica's node may be gone before
	// the replica is replaced elsewhere.
	ReplicaGracePeriod time.Duration
	// CreateTimeout is how long a volume whose create was interrupted
	// stays before the active controller removes it.
	CreateTimeout time.Duration
}

// Setting is one setting the file gave.
type Setting struct {
	// Key is its name, dotted inside a block: "lock_delay",
	// "consul.address", "controller.replica_grace_period", "labels".
	Key string
	// Values is the value as text, as written ("5s" for a duration); for
	// labels, one "key=value" per label, sorted by key.
	Values []string
	// Range is where the value was written (for labels, the block).
	Range hcl.Range
}

// Settings lists the settings the file gave, in the order of Keys.
func (c *Config) Settings() []Setting { return slices.Clone(c.settings) }

// Keys are every setting's Key, in a fixed order.
var Keys = []string{
	"name", "log_level", "data_dir", "bind_addr", "advertise_addr", "csi_endpoint",
	"lock_delay", "ttl", "labels",
	"consul.address", "consul.token", "consul.ca_file", "consul.cert_file", "consul.key_file",
	"consul.tls_server_name", "consul.kv_prefix",
	"controller.replica_grace_period", "controller.create_timeout",
}

// LogLevels are the accepted log_level values.
var LogLevels = []string{"trace", "debug", "info", "warn", "error"}

// Bounds of the durations, as the node agent (leader.NewAgent) and Consul
// accept them: Consul caps a session's lock-delay at 60s.
const (
	MinLockDelay = 100 * time.Millisecond
	MaxLockDelay = 60 * time.Second
	MinTTL       = time.Second
)

type rawConfig struct {
	Name          *string        `hcl:"name,optional"`
	LogLevel      *string        `hcl:"log_level,optional"`
	DataDir       *string        `hcl:"data_dir,optional"`
	BindAddr      *string        `hcl:"bind_addr,optional"`
	AdvertiseAddr *string        `hcl:"advertise_addr,optional"`
	CSIEndpoint   *string        `hcl:"csi_endpoint,optional"`
	LockDelay     *string        `hcl:"lock_delay,optional"`
	TTL           *string        `hcl:"ttl,optional"`
	Labels        *rawMap        `hcl:"labels,block"`
	Consul        *rawConsul     `hcl:"consul,block"`
	Controller    *rawController `hcl:"controller,block"`

	NameRange          hcl.Range `hcl:"name,attr_value_range"`
	LogLevelRange      hcl.Range `hcl:"log_level,attr_value_range"`
	DataDirRange       hcl.Range `hcl:"data_dir,attr_value_range"`
	BindAddrRange      hcl.Range `hcl:"bind_addr,attr_value_range"`
	AdvertiseAddrRange hcl.Range `hcl:"advertise_addr,attr_value_range"`
	CSIEndpointRange   hcl.Range `hcl:"csi_endpoint,attr_value_range"`
	LockDelayRange     hcl.Range `hcl:"lock_delay,attr_value_range"`
	TTLRange           hcl.Range `hcl:"ttl,attr_value_range"`
}

type rawMap struct {
	Body     hcl.Body  `hcl:",remain"`
	DefRange hcl.Range `hcl:",def_range"`
}

type rawConsul struct {
	Address       *string `hcl:"address,optional"`
	Token         *string `hcl:"token,optional"`
	CAFile        *string `hcl:"ca_file,optional"`
	CertFile      *string `hcl:"cert_file,optional"`
	KeyFile       *string `hcl:"key_file,optional"`
	TLSServerName *string `hcl:"tls_server_name,optional"`
	KVPrefix      *string `hcl:"kv_prefix,optional"`

	AddressRange       hcl.Range `hcl:"address,attr_value_range"`
	TokenRange         hcl.Range `hcl:"token,attr_value_range"`
	CAFileRange        hcl.Range `hcl:"ca_file,attr_value_range"`
	CertFileRange      hcl.Range `hcl:"cert_file,attr_value_range"`
	KeyFileRange       hcl.Range `hcl:"key_file,attr_value_range"`
	TLSServerNameRange hcl.Range `hcl:"tls_server_name,attr_value_range"`
	KVPrefixRange      hcl.Range `hcl:"kv_prefix,attr_value_range"`
	DefRange           hcl.Range `hcl:",def_range"`
}

type rawController struct {
	ReplicaGracePeriod      *string   `hcl:"replica_grace_period,optional"`
	ReplicaGracePeriodRange hcl.Range `hcl:"replica_grace_period,attr_value_range"`
	CreateTimeout           *string   `hcl:"create_timeout,optional"`
	CreateTimeoutRange      hcl.Range `hcl:"create_timeout,attr_value_range"`
	DefRange                hcl.Range `hcl:",def_range"`
}

// ParseFile reads and parses the config file at path; see Parse.
func ParseFile(path string) (*Config, hcl.Diagnostics) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  "cannot read config file",
			Detail:   err.Error(),
			Subject:  &hcl.Range{Filename: path, Start: hcl.InitialPos, End: hcl.InitialPos},
		}}
	}
	return Parse(path, src)
}

// Parse decodes an agent config file, HCL or (when filename ends in
// ".json") JSON, and checks every value. Problems are returned ordered by
// position, each at the range it is about; a syntax error is returned
// alone (the first one). The Config is nil exactly when diags has errors.
func Parse(filename string, src []byte) (*Config, hcl.Diagnostics) {
	p := hclparse.NewParser()
	var f *hcl.File
	var diags hcl.Diagnostics
	if strings.HasSuffix(filename, ".json") {
		f, diags = p.ParseJSON(src, filename)
	} else {
		f, diags = p.ParseHCL(src, filename)
	}
	if diags.HasErrors() {
		return nil, hclutil.FirstError(diags)
	}
	var raw rawConfig
	diags = append(diags, hclutil.DropOverlapping(gohcl.DecodeBody(f.Body, nil, &raw))...)
	if diags.HasErrors() {
		hclutil.SortByPosition(diags)
		return nil, diags
	}
	c := &Config{}
	diags = append(diags, c.check(&raw)...)
	hclutil.SortByPosition(diags)
	if diags.HasErrors() {
		return nil, diags
	}
	sort.SliceStable(c.settings, func(i, j int) bool {
		return slices.Index(Keys, c.settings[i].Key) < slices.Index(Keys, c.settings[j].Key)
	})
	return c, diags
}

// checker collects diagnostics and settings while values are checked.
type checker struct {
	c     *Config
	diags hcl.Diagnostics
}

func (k *checker) errAt(r hcl.Range, summary, detail string) {
	k.diags = append(k.diags, hclutil.Error(r, summary, detail))
}

// str records a string setting that must not be empty, after valid
// (which may be nil) accepts it.
func (k *checker) str(key string, v *string, at hcl.Range, dst *string, valid func(string) string) {
	if v == nil {
		return
	}
	if strings.TrimSpace(*v) == "" {
		k.errAt(at, key+" is empty", "give a value or leave "+key+" out")
		return
	}
	if valid != nil {
		if msg := valid(*v); msg != "" {
			k.errAt(at, msg, "")
			return
		}
	}
	*dst = *v
	k.c.settings = append(k.c.settings, Setting{Key: key, Values: []string{*v}, Range: at})
}

// duration records a duration setting from least to most (no upper
// bound when most is 0).
func (k *checker) duration(key string, v *string, at hcl.Range, dst *time.Duration, least, most time.Duration) {
	if v == nil {
		return
	}
	d, err := time.ParseDuration(*v)
	switch {
	case err != nil:
		k.errAt(at, fmt.Sprintf("%s %q is not a duration", key, *v), `write a number with a unit, like "5s", "500ms" or "10m"`)
		return
	case d < least:
		k.errAt(at, fmt.Sprintf("%s must be at least %s", key, least), fmt.Sprintf(`write a duration like "%s"`, max(least, 5*time.Second)))
		return
	case most > 0 && d > most:
		k.errAt(at, fmt.Sprintf("%s must be at most %s", key, most), "Consul accepts no longer lock-delay")
		return
	}
	*dst = d
	k.c.settings = append(k.c.settings, Setting{Key: key, Values: []string{*v}, Range: at})
}

func (c *Config) check(raw *rawConfig) hcl.Diagnostics {
	k := &checker{c: c}
	k.str("name", raw.Name, raw.NameRange, &c.Name, nil)
	k.str("log_level", raw.LogLevel, raw.LogLevelRange, &c.LogLevel, func(s string) string {
		if slices.Contains(LogLevels, s) {
			return ""
		}
		return "log_level must be " + hclutil.List(LogLevels, false)
	})
	k.str("data_dir", raw.DataDir, raw.DataDirRange, &c.DataDir, nil)
	k.str("bind_addr", raw.BindAddr, raw.BindAddrRange, &c.BindAddr, func(s string) string { return hostPort("bind_addr", s, 0) })
	k.str("advertise_addr", raw.AdvertiseAddr, raw.AdvertiseAddrRange, &c.AdvertiseAddr, func(s string) string { return hostPort("advertise_addr", s, 1) })
	k.str("csi_endpoint", raw.CSIEndpoint, raw.CSIEndpointRange, &c.CSIEndpoint, csiEndpoint)
	k.duration("lock_delay", raw.LockDelay, raw.LockDelayRange, &c.LockDelay, MinLockDelay, MaxLockDelay)
	k.duration("ttl", raw.TTL, raw.TTLRange, &c.TTL, MinTTL, 0)
	if raw.Labels != nil {
		k.labels(raw.Labels)
	}
	if cs := raw.Consul; cs != nil {
		k.str("consul.address", cs.Address, cs.AddressRange, &c.Consul.Address, nil)
		k.str("consul.token", cs.Token, cs.TokenRange, &c.Consul.Token, nil)
		k.str("consul.ca_file", cs.CAFile, cs.CAFileRange, &c.Consul.CAFile, nil)
		k.str("consul.cert_file", cs.CertFile, cs.CertFileRange, &c.Consul.CertFile, nil)
		k.str("consul.key_file", cs.KeyFile, cs.KeyFileRange, &c.Consul.KeyFile, nil)
		k.str("consul.tls_server_name", cs.TLSServerName, cs.TLSServerNameRange, &c.Consul.TLSServerName, nil)
		k.str("consul.kv_prefix", cs.KVPrefix, cs.KVPrefixRange, &c.Consul.KVPrefix, func(s string) string {
			if strings.HasPrefix(s, "/") || strings.Contains(s, "//") {
				return `consul.kv_prefix must not start with "/" or hold "//": Consul KV keys are relative paths, e.g. "saddlebag/"`
			}
			return ""
		})
		if (cs.CertFile == nil) != (cs.KeyFile == nil) {
			k.errAt(cs.DefRange, "consul has only one of cert_file and key_file", "a client certificate needs its key: give both, or neither")
		}
	}
	if ct := raw.Controller; ct != nil {
		k.duration("controller.replica_grace_period", ct.ReplicaGracePeriod, ct.ReplicaGracePeriodRange, &c.Controller.ReplicaGracePeriod, time.Second, 0)
		k.duration("controller.create_timeout", ct.CreateTimeout, ct.CreateTimeoutRange, &c.Controller.CreateTimeout, time.Second, 0)
	}
	return k.diags
}

// Consul's limits on service meta, where labels end up.
const (
	maxLabels          = 64
	maxLabelValueBytes = 512
)

func (k *checker) labels(b *rawMap) {
	attrs, diags := hclutil.BodyStringMap(b.Body, hclutil.BoolWords)
	k.diags = append(k.diags, diags...)
	if diags.HasErrors() {
		return
	}
	if len(attrs) > maxLabels {
		k.errAt(b.DefRange, fmt.Sprintf("%d labels is too many", len(attrs)), fmt.Sprintf("Consul keeps at most %d meta pairs per service", maxLabels))
		return
	}
	labels := map[string]string{}
	var pairs []string
	ok := true
	for key, a := range attrs {
		switch {
		case !hclutil.ValidLabelKey(key):
			k.errAt(a.NameRange, fmt.Sprintf("label %q is not a valid label name", key), "a label name is "+hclutil.LabelKeyRule)
			ok = false
		case len(a.Value) > maxLabelValueBytes:
			k.errAt(a.ValueRange, fmt.Sprintf("label %s's value is longer than %d bytes", key, maxLabelValueBytes), "Consul keeps meta values up to 512 bytes")
			ok = false
		}
		labels[key] = a.Value
		pairs = append(pairs, key+"="+a.Value)
	}
	if !ok {
		return
	}
	sort.Strings(pairs)
	k.c.Labels = labels
	k.c.settings = append(k.c.settings, Setting{Key: "labels", Values: pairs, Range: b.DefRange})
}

// hostPort checks a host:port address whose port is at least minPort.
func hostPort(key, s string, minPort int) string {
	_, p, err := net.SplitHostPort(s)
	if err == nil {
		n, perr := strconv.Atoi(p)
		if perr == nil && n >= minPort && n <= 65535 {
			return ""
		}
	}
	return fmt.Sprintf("%s %q is not a host:port address with a port from %d to 65535, like \"10.0.0.5:7400\"", key, s, minPort)
}

// csiEndpoint checks a CSI endpoint: unix:///path, an absolute path, or
// tcp://host:port.
func csiEndpoint(s string) string {
	switch {
	case strings.HasPrefix(s, "unix://") && len(s) > len("unix://"):
		return ""
	case strings.HasPrefix(s, "/"):
		return ""
	case strings.HasPrefix(s, "tcp://") && hostPort("", strings.TrimPrefix(s, "tcp://"), 1) == "":
		return ""
	}
	return fmt.Sprintf(`csi_endpoint %q must be unix:///path/to/csi.sock, an absolute socket path, or tcp://host:port`, s)
}
