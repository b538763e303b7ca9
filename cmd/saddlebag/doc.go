// Command saddlebag is Saddlebag's single binary. Each subcommand parses
// flags and wires packages together; the logic lives in those packages.
//
//	saddlebag replica --data-dir DIR --listen ADDR
//	saddlebag engine --volume NAME --size SIZE --epoch N --replica ADDR... --nbd-socket PATH
//	saddlebag node --data-dir DIR --listen ADDR --consul-addr ADDR [--serve-volume NAME ...]
//	saddlebag bench
//	saddlebag version
package main
