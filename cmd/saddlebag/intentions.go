package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/leader"
)

func init() {
	register("setup-intentions", "install the Consul intentions Saddlebag's connections need (idempotent)", runSetupIntentions)
}

// runSetupIntentions writes connecttls.DefaultIntentions into Consul:
// saddlebag-node accepts saddlebag-node and saddlebag-controller,
// saddlebag-controller accepts saddlebag-controller, every other source
// is denied. It needs a token with intention:write on both services
// (operator's, not the agents': they only read intentions).
func runSetupIntentions(ctx context.Context, args []string) error {
	fs := newFlagSet("setup-intentions")
	var consul leader.ConsulConfig
	addConsulAPIFlags(fs, &consul)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := leader.NewClient(consul, nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	changes, err := connecttls.InstallIntentions(ctx, c.API())
	for _, ch := range changes {
		fmt.Fprintf(os.Stdout, "intention %s\n", ch)
	}
	if err != nil {
		return err
	}
	if len(changes) == 0 {
		fmt.Fprintln(os.Stdout, "intentions already in place")
	}
	return nil
}
