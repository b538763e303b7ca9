// Command saddlebag is Saddlebag's single binary. Each subcommand parses
// flags and wires packages together; the logic lives in those packages.
// node and controller also read the agent config file given with -config
// (hcl/agentconfig, applied in config.go); flags on the command line win.
//
//	saddlebag replica --data-dir DIR --listen ADDR
//	saddlebag engine --volume NAME --size SIZE --epoch N --replica ADDR... --nbd-socket PATH
//	saddlebag node [-config FILE] --data-dir DIR --listen ADDR --consul-addr ADDR [--serve-volume NAME ...]
//	saddlebag controller [-config FILE] --csi-endpoint unix:///PATH --consul-addr ADDR
//	saddlebag volume validate FILE...
//	saddlebag volume create FILE [--address NOMAD_ADDR] [--token TOKEN]
//	saddlebag volume passphrase add|remove VOLUME_ID [--consul-addr ADDR]
//	saddlebag bench
//	saddlebag version
package main
