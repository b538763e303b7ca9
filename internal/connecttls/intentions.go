package connecttls

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
)

// DefaultIntentions are the intentions Saddlebag needs, by destination
// service: each lists its allowed sources, and every other source ("*")
// is denied, whatever Consul's default intention policy is.
//
//   - saddlebag-node accepts saddlebag-node (a primary writes to its
//     replicas, resyncs them, promises its epoch) and saddlebag-controller
//     (creates and deletes replicas).
//   - saddlebag-controller accepts saddlebag-controller (a standby
//     forwards mutating CSI calls to the active one).
var DefaultIntentions = map[string][]string{
	NodeService:       {NodeService, ControllerService},
	ControllerService: {ControllerService},
}

// IntentionChange is one source intention InstallIntentions wrote.
type IntentionChange struct {
	Destination, Source string
	Action              api.IntentionAction
}

func (c IntentionChange) String() string {
	return fmt.Sprintf("%s -> %s: %s", c.Source, c.Destination, c.Action)
}

// InstallIntentions makes the service-intentions config entries of
// DefaultIntentions hold: each allowed source "allow", "*" "deny". Other
// sources an operator added are kept, and an existing intention for one
// of ours that says otherwise is overwritten (it is reported). Each entry
// is written with check-and-set, so a concurrent edit is not lost (it
// fails and can be retried). It returns what changed; nothing when all
// was in place.
func InstallIntentions(ctx context.Context, c *api.Client) ([]IntentionChange, error) {
	var changes []IntentionChange
	dests := make([]string, 0, len(DefaultIntentions))
	for d := range DefaultIntentions {
		dests = append(dests, d)
	}
	slices.Sort(dests)
	for _, dest := range dests {
		want := map[string]api.IntentionAction{"*": api.IntentionActionDeny}
		for _, src := range DefaultIntentions[dest] {
			want[src] = api.IntentionActionAllow
		}
		entry := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: dest}
		var index uint64
		got, _, err := c.ConfigEntries().Get(api.ServiceIntentions, dest, (&api.QueryOptions{}).WithContext(ctx))
		switch {
		case err == nil:
			entry = got.(*api.ServiceIntentionsConfigEntry)
			index = entry.ModifyIndex
		case strings.Contains(err.Error(), "404"):
		default:
			return changes, fmt.Errorf("read intentions of %s: %w", dest, err)
		}
		var these []IntentionChange
		srcs := make([]string, 0, len(want))
		for s := range want {
			srcs = append(srcs, s)
		}
		slices.Sort(srcs)
		for _, src := range srcs {
			action := want[src]
			i := slices.IndexFunc(entry.Sources, func(s *api.SourceIntention) bool { return s.Name == src && s.Peer == "" })
			switch {
			case i < 0:
				entry.Sources = append(entry.Sources, &api.SourceIntention{Name: src, Action: action, Type: api.IntentionSourceConsul,
					Description: "saddlebag setup-intentions"})
			case entry.Sources[i].Action != action || len(entry.Sources[i].Permissions) > 0:
				entry.Sources[i].Action, entry.Sources[i].Permissions = action, nil
			default:
				continue
			}
			these = append(these, IntentionChange{Destination: dest, Source: src, Action: action})
		}
		if len(these) == 0 {
			continue
		}
		ok, _, err := c.ConfigEntries().CAS(entry, index, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			return changes, fmt.Errorf("write intentions of %s: %w", dest, err)
		}
		if !ok {
			return changes, fmt.Errorf("write intentions of %s: changed meanwhile by someone else; run again", dest)
		}
		changes = append(changes, these...)
	}
	return changes, nil
}
