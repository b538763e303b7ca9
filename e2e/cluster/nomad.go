package cluster

import (
	"strings"
	"text/template"
	"time"
)

// Timing is the Nomad server settings that decide how fast a dead node is
// noticed and its work moved. The defaults are the documented settings
// for Saddlebag clusters (README, "End-to-end harness").
type Timing struct {
	// MinHeartbeatTTL is the shortest heartbeat TTL the server hands a
	// client (Nomad default 10s). A client heartbeats once per TTL; the
	// server uses TTL plus a random stagger of up to TTL.
	MinHeartbeatTTL time.Duration
	// HeartbeatGrace is how long past its TTL the server waits for a
	// heartbeat before marking the node down (Nomad default 10s). A node
	// killed right after a heartbeat is marked down within
	// 2*MinHeartbeatTTL + HeartbeatGrace; one killed just before its next
	// heartbeat, after about HeartbeatGrace.
	HeartbeatGrace time.Duration
	// CSIVolumeClaimGCInterval is how often the server collects the CSI
	// claims of allocations that are gone (Nomad default 5m). It is what
	// frees the claim of an allocation lost on a down node: Nomad writes
	// nothing else to the volume, so its volume watcher does not run
	// until this GC does, and the replacement's claim is refused until
	// then (issue 12; `nomad volume detach`, which would do it at once,
	// fails for such a claim in Nomad 1.11.3 with "Unknown allocation").
	CSIVolumeClaimGCInterval time.Duration
	// CSIVolumeClaimGCThreshold is how long a volume must have gone
	// unmodified before the claim GC looks at it (Nomad default 5m).
	CSIVolumeClaimGCThreshold time.Duration
}

// DefaultTiming is what the harness and the demo run with: a node killed
// is marked down within 3–7 s instead of Nomad's default 10–30 s, and
// its lost allocation's volume claim is freed within about 2 s of that
// instead of up to Nomad's 5 minutes.
var DefaultTiming = Timing{
	MinHeartbeatTTL:           2 * time.Second,
	HeartbeatGrace:            3 * time.Second,
	CSIVolumeClaimGCInterval:  2 * time.Second,
	CSIVolumeClaimGCThreshold: 2 * time.Second,
}

func (t Timing) withDefaults() Timing {
	d := DefaultTiming
	if t.MinHeartbeatTTL > 0 {
		d.MinHeartbeatTTL = t.MinHeartbeatTTL
	}
	if t.HeartbeatGrace > 0 {
		d.HeartbeatGrace = t.HeartbeatGrace
	}
	if t.CSIVolumeClaimGCInterval > 0 {
		d.CSIVolumeClaimGCInterval = t.CSIVolumeClaimGCInterval
	}
	if t.CSIVolumeClaimGCThreshold > 0 {
		d.CSIVolumeClaimGCThreshold = t.CSIVolumeClaimGCThreshold
	}
	return d
}

// deniedFingerprinters probe cloud metadata addresses (docs/architecture.md, "What we measured about Nomad").
const deniedFingerprinters = "env_aws,env_gce,env_azure,env_digitalocean"

// deniedDrivers are drivers the clusters do not use; left on, they only
// probe for daemons and runtimes that are not there (and a source build
// of Nomad carries a mock driver that must not take real work).
const deniedDrivers = "docker,podman,java,qemu,mock_driver"

// nomadServerHCL is the Nomad server's agent configuration.
func nomadServerHCL(ip, dataDir, consulHTTP string, t Timing) string {
	return render(serverTmpl, map[string]string{
		"DataDir": dataDir, "IP": ip, "Consul": consulHTTP, "ConsulToken": ConsulManagementToken,
		"MinHeartbeatTTL": dur(t.MinHeartbeatTTL), "HeartbeatGrace": dur(t.HeartbeatGrace),
		"ClaimGCInterval": dur(t.CSIVolumeClaimGCInterval), "ClaimGCThreshold": dur(t.CSIVolumeClaimGCThreshold),
	})
}

var serverTmpl = template.Must(template.New("server").Parse(`name                 = "server"
data_dir             = {{printf "%q" .DataDir}}
bind_addr            = {{printf "%q" .IP}}
log_level            = "INFO"
disable_update_check = true

advertise {
  http = {{printf "%q" .IP}}
  rpc  = {{printf "%q" .IP}}
  serf = {{printf "%q" .IP}}
}

server {
  enabled          = true
  bootstrap_expect = 1

  # Fast failure detection (see Timing).
  min_heartbeat_ttl             = {{printf "%q" .MinHeartbeatTTL}}
  heartbeat_grace               = {{printf "%q" .HeartbeatGrace}}
  csi_volume_claim_gc_interval  = {{printf "%q" .ClaimGCInterval}}
  csi_volume_claim_gc_threshold = {{printf "%q" .ClaimGCThreshold}}
}

client {
  enabled = false
}

consul {
  address = {{printf "%q" .Consul}}
  token   = {{printf "%q" .ConsulToken}}
}
`))

// nomadClientHCL is node name's Nomad client configuration: bound to the
// node's address in its namespace, raw_exec on (Saddlebag runs under
// it), exec on (workloads that mount volumes need it), cloud
// fingerprinters and unused drivers off, its own cgroup parent so that
// three clients on one host do not manage each other's cgroups.
func nomadClientHCL(name, ip, dataDir, serverRPC, consulHTTP, cgParent string) string {
	return render(clientTmpl, map[string]string{
		"Name": name, "DataDir": dataDir, "IP": ip, "Server": serverRPC, "Iface": nodeIface,
		"CgroupParent": cgParent, "DeniedFingerprinters": deniedFingerprinters,
		"DeniedDrivers": deniedDrivers, "Consul": consulHTTP, "ConsulToken": ConsulManagementToken,
	})
}

var clientTmpl = template.Must(template.New("client").Parse(`name                 = {{printf "%q" .Name}}
data_dir             = {{printf "%q" .DataDir}}
bind_addr            = {{printf "%q" .IP}}
log_level            = "INFO"
disable_update_check = true

advertise {
  http = {{printf "%q" .IP}}
  rpc  = {{printf "%q" .IP}}
  serf = {{printf "%q" .IP}}
}

server {
  enabled = false
}

client {
  enabled           = true
  servers           = [{{printf "%q" .Server}}]
  network_interface = {{printf "%q" .Iface}}
  cgroup_parent     = {{printf "%q" .CgroupParent}}

  meta {
    "saddlebag.e2e.node" = {{printf "%q" .Name}}
  }

  # The exec driver's chroot: what the example Postgres job needs
  # (/bin/sh and coreutils, the C libraries and the loader, Postgres,
  # time zones), instead of Nomad's default (/bin /etc /lib /lib32 /lib64
  # /run/resolvconf /sbin /usr), which hard-links every file of /usr
  # (~150,000 here) into each task directory at every start: 19 s of a
  # failover on this host when loaded; these are ~8,000 (README,
  # "Failover", has the measured figures). Sources that do not exist are
  # skipped; on a
  # merged-/usr host /bin and /lib/<arch> are /usr/bin and
  # /usr/lib/<arch>, and the loader's path is under /lib64.
  chroot_env {
    "/bin"                   = "/bin"
    "/etc"                   = "/etc"
    "/lib64"                 = "/lib64"
    "/lib/x86_64-linux-gnu"  = "/lib/x86_64-linux-gnu"
    "/lib/aarch64-linux-gnu" = "/lib/aarch64-linux-gnu"
    "/usr/lib/postgresql"    = "/usr/lib/postgresql"
    "/usr/share/postgresql"  = "/usr/share/postgresql"
    "/usr/share/zoneinfo"    = "/usr/share/zoneinfo"
  }

  options = {
    "fingerprint.denylist" = {{printf "%q" .DeniedFingerprinters}}
    "driver.denylist"      = {{printf "%q" .DeniedDrivers}}
  }
}

plugin "raw_exec" {
  config {
    enabled = true
  }
}

consul {
  address = {{printf "%q" .Consul}}
  token   = {{printf "%q" .ConsulToken}}
}
`))

func render(t *template.Template, data map[string]string) string {
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		panic(err) // the templates are constants; a failure is a bug here
	}
	return b.String()
}

// dur formats d as a Go duration, which Nomad parses ("2s", "1m0s").
func dur(d time.Duration) string { return d.String() }
