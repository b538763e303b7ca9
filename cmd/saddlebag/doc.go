// Command saddlebag is Saddlebag's single binary. Each subcommand parses
// flags and wires packages together; the logic lives in those packages.
// node and controller also read the agent config file given with -config
// (hcl/agentconfig, applied in config.go); flags on the command line win.
//
//	saddlebag replica --data-dir DIR --listen ADDR [--consul-addr ADDR | --insecure]
//	saddlebag engine --volume NAME --size SIZE --epoch N --replica ADDR... --nbd-socket PATH [--consul-addr ADDR | --insecure]
//	saddlebag node [-config FILE] --data-dir DIR --listen ADDR --consul-addr ADDR [--metrics-addr ADDR] [--resync-rate RATE] [--csi-endpoint unix:///PATH]
//	saddlebag controller [-config FILE] --csi-endpoint unix:///PATH --consul-addr ADDR [--metrics-addr ADDR]
//	saddlebag setup-intentions [--consul-addr ADDR]
//	saddlebag status [VOLUME] [--json] [--consul-addr ADDR]
//	saddlebag status --addr HOST:PORT
//	saddlebag volume validate FILE...
//	saddlebag volume create FILE [--address NOMAD_ADDR] [--token TOKEN]
//	saddlebag volume passphrase add|remove VOLUME_ID [--consul-addr ADDR]
//	saddlebag bench
//	saddlebag version
//
// Transport security (transport.go): every connection between processes
// is mutual TLS with the process's Consul Connect certificate
// (saddlebag-node or saddlebag-controller, internal/connecttls), and
// servers admit only what Consul intentions allow: the replica server
// through a replication/replica.Guard, primaries and the controller through a
// replication.Dialer, the forward channel through gRPC credentials and an
// authorizing interceptor, an engine's status endpoint off loopback
// through HTTPS. --insecure, the only way without, is logged loudly at
// every start.
//
// Monitoring (metrics.go, status.go): node and controller serve metrics
// at /v1/metrics?format=prometheus on --metrics-addr (internal/telemetry;
// loopback by default), the node publishes its primaries' resync progress
// to Consul (internal/primary.PublishProgress), and `saddlebag status`
// shows the cluster from Consul (internal/clusterstatus).
package main
