package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/internal/clusterstatus"
	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/internal/statusapi"
	"github.com/saddlebag/saddlebag/leader"
)

func init() {
	register("status", "show every volume (or one) from Consul: primary, epoch, replicas and their resync, health; --addr for one running engine", runStatus)
}

const statusUsage = `usage: saddlebag status [flags] [VOLUME]
  From Consul (--consul-addr, --consul-token, ... or CONSUL_HTTP_*): every
  volume, or VOLUME, with size, primary node and epoch, replicas by node
  with their state (in sync, resyncing with progress, missing, lost) and
  health. --addr HOST:PORT instead shows one running engine's own view.`

func runStatus(ctx context.Context, args []string) error {
	fs := newFlagSet("status")
	addr := fs.String("addr", "", "show the running engine at this --status-addr instead of the cluster")
	asJSON := fs.Bool("json", false, "print JSON")
	var consul leader.ConsulConfig
	addConsulFlags(fs, &consul)
	var insecure bool
	fs.BoolVar(&insecure, "insecure", false, "with --addr: read a status endpoint that is not on loopback over plain HTTP (an engine started with --insecure)")
	rest, err := parseInterspersed(fs, args, statusUsage)
	if err != nil {
		return err
	}
	if len(rest) > 1 {
		return usageError{fmt.Errorf("unexpected argument %q: at most one VOLUME", rest[1])}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if *addr != "" {
		if len(rest) > 0 {
			return usageError{errors.New("--addr shows one engine: give no VOLUME with it")}
		}
		return engineStatus(ctx, *addr, consul, insecure, *asJSON, os.Stdout)
	}
	volume := ""
	if len(rest) == 1 {
		volume = rest[0]
		if err := leader.ValidateName("volume id", volume); err != nil {
			return usageError{err}
		}
	}
	client, err := leader.NewClient(consul, hclog.NewNullLogger())
	if err != nil {
		return err
	}
	st, err := clusterstatus.Read(ctx, client, volume)
	if errors.Is(err, leader.ErrNotFound) {
		return fmt.Errorf("volume %s: no such volume in Consul", volume)
	}
	if err != nil {
		return err
	}
	return printStatus(os.Stdout, st, volume == "", *asJSON)
}

func printStatus(w io.Writer, st clusterstatus.Status, all, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if !all {
			return enc.Encode(st.Volumes[0])
		}
		return enc.Encode(st)
	}
	clusterstatus.Format(w, st, all)
	return nil
}

// engineStatus is the per-engine view (--addr): what the engine itself
// says of its replicas.
func engineStatus(ctx context.Context, addr string, consul leader.ConsulConfig, insecure, asJSON bool, w io.Writer) error {
	// Loopback endpoints are plain HTTP; others need this host's
	// saddlebag-node certificate from the local Consul agent.
	tr := &transport{}
	if !insecure && !isLoopback(addr) {
		var err error
		if tr, err = dialTransport(ctx, false, consul, connecttls.NodeService, hclog.NewNullLogger()); err != nil {
			return err
		}
		defer tr.close()
	}
	st, err := statusapi.Fetch(ctx, addr, tr.statusClientTLS(addr))
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	statusapi.Format(w, st)
	return nil
}
