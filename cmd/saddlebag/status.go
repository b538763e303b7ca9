package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/internal/statusapi"
	"github.com/saddlebag/saddlebag/leader"
)

func init() {
	register("status", "show a running engine's replicas, resync progress and fencing", runStatus)
}

func runStatus(ctx context.Context, args []string) error {
	fs := newFlagSet("status")
	addr := fs.String("addr", "", "the engine's --status-addr (required)")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	var consul leader.ConsulConfig
	addConsulAPIFlags(fs, &consul)
	var insecure bool
	fs.BoolVar(&insecure, "insecure", false, "read a status endpoint that is not on loopback over plain HTTP (an engine started with --insecure)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *addr == "" {
		return usageError{errors.New("--addr is required")}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// Loopback endpoints are plain HTTP; others need this host's
	// saddlebag-node certificate from the local Consul agent.
	tr := &transport{}
	if !insecure && !isLoopback(*addr) {
		var err error
		if tr, err = dialTransport(ctx, false, consul, connecttls.NodeService, hclog.NewNullLogger()); err != nil {
			return err
		}
		defer tr.close()
	}
	st, err := statusapi.Fetch(ctx, *addr, tr.statusClientTLS(*addr))
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	statusapi.Format(os.Stdout, st)
	return nil
}
