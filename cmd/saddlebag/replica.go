package main

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication/replica"
)

func init() {
	register("replica", "serve the replicas stored under a data directory", runReplica)
}

func runReplica(ctx context.Context, args []string) error {
	fs := newFlagSet("replica")
	dataDir := fs.String("data-dir", "", "directory holding the replicas (required)")
	listen := fs.String("listen", "", "host:port to serve replicas on (required)")
	logLevel := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	var consul leader.ConsulConfig
	addConsulAPIFlags(fs, &consul)
	var insecure bool
	addInsecureFlag(fs, &insecure)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dataDir == "" || *listen == "" {
		return usageError{errors.New("--data-dir and --listen are required")}
	}
	log := newLogger("saddlebag", *logLevel)
	store, err := replica.OpenStore(*dataDir, log)
	if err != nil {
		return err
	}
	tr, err := dialTransport(ctx, insecure, consul, connecttls.NodeService, log)
	if err != nil {
		return err
	}
	defer tr.close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	log.Info("serving replicas", "data_dir", *dataDir, "addr", ln.Addr().String(), "tls", !insecure)
	return replica.NewServer(store, log).WithGuard(tr.replicaGuard()).Serve(ctx, ln)
}
