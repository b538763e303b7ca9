package main

import (
	"context"
	"errors"

	"github.com/saddlebag/saddlebag/internal/fdkeeper"
)

func init() {
	register("keeper", "hold staged volumes' FUSE descriptors so they outlive the node process (its own Nomad job)", runKeeper)
}

// runKeeper is the descriptor keeper (internal/fdkeeper): deliberately
// tiny, so that it rarely needs an upgrade. Stopping it costs nothing
// while `saddlebag node` runs (the node deposits its descriptors again);
// it only matters while no node process runs. It also frees a node
// process stuck exiting (fdkeeper's reap.go).
func runKeeper(ctx context.Context, args []string) error {
	fs := newFlagSet("keeper")
	socket := fs.String("socket", "/run/saddlebag/keeper.sock", "unix socket to serve on (root only)")
	logLevel := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	grace := fs.Duration("stuck-node-grace", fdkeeper.DefaultGrace,
		"how long a node process may linger stuck exiting (a zombie with a thread waiting on its own FUSE file) before the keeper aborts its unparked FUSE connections to free it; as long again before the parked ones")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *socket == "" {
		return usageError{errors.New("--socket is required")}
	}
	if *grace <= 0 {
		return usageError{errors.New("--stuck-node-grace must be positive")}
	}
	k := fdkeeper.New(newLogger("saddlebag-keeper", *logLevel))
	k.Grace = *grace
	defer k.Close()
	return k.Serve(ctx, *socket)
}
