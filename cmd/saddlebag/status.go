package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"time"

	"github.com/saddlebag/saddlebag/internal/statusapi"
)

func init() {
	register("status", "show a running engine's replicas, resync progress and fencing", runStatus)
}

func runStatus(ctx context.Context, args []string) error {
	fs := newFlagSet("status")
	addr := fs.String("addr", "", "the engine's --status-addr (required)")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *addr == "" {
		return usageError{errors.New("--addr is required")}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := statusapi.Fetch(ctx, *addr)
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
