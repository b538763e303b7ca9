// Package nomadclaims lets the active controller free, through Nomad's
// HTTP API, the CSI volume claims of allocations lost on a node Nomad
// has marked down (plugin.ClaimReleaser; issue 12).
//
// Nomad frees such a claim only when something writes to the volume:
// its periodic claim GC (csi_volume_claim_gc_interval, 5 minutes by
// default) or `nomad volume detach`. Until then the replacement
// allocation's claim is refused ("volume max claims reached") and its
// Nomad client retries at 2, 4, 8, 16, 32 s. This package follows
// Nomad's event stream (topics Node and Allocation) and, when an
// allocation holding a claim on one of this plugin's volumes is lost on
// a down node, calls the volume detach API (DELETE
// /v1/volume/csi/:id/detach?node=...), which is what `nomad volume
// detach` does: Nomad skips the node unpublish (the node is down), sends
// ControllerUnpublishVolume (which fences the node at its epoch) and
// frees the claim.
//
// With Nomad ACLs on, the controller's token (NOMAD_TOKEN) needs, in the
// volumes' namespaces, csi-list-volume, csi-read-volume and
// csi-mount-volume; plugin read; node read (README, "Failover").
package nomadclaims

import (
	"context"
	"fmt"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/saddlebag/saddlebag/plugin"
)

// Releaser is a plugin.ClaimReleaser over Nomad's HTTP API.
type Releaser struct {
	api *nomadapi.Client
	// Provider is the CSI plugin name of the volumes to look after
	// (plugin.PluginName).
	provider string
	onErr    func(error)
}

var _ plugin.ClaimReleaser = (*Releaser)(nil)

// New returns a Releaser for the Nomad agent that cfg names (address,
// token and TLS as Nomad's CLI takes them: nomadapi.DefaultConfig reads
// NOMAD_ADDR, NOMAD_TOKEN, NOMAD_CACERT, ...). onErr, if set, hears of
// event stream failures (the periodic pass covers for them).
func New(cfg *nomadapi.Config, onErr func(error)) (*Releaser, error) {
	c, err := nomadapi.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("nomad client: %w", err)
	}
	if onErr == nil {
		onErr = func(error) {}
	}
	return &Releaser{api: c, provider: plugin.PluginName, onErr: onErr}, nil
}

// Changes follows Nomad's event stream and signals on every node marked
// down and every allocation lost. It reconnects after a broken stream;
// the channel is never closed.
func (r *Releaser) Changes(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	signal := func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	go func() {
		topics := map[nomadapi.Topic][]string{nomadapi.TopicNode: {"*"}, nomadapi.TopicAllocation: {"*"}}
		var index uint64
		for ctx.Err() == nil {
			q := (&nomadapi.QueryOptions{Namespace: "*"}).WithContext(ctx)
			stream, err := r.api.EventStream().Stream(ctx, topics, index, q)
			if err != nil {
				r.onErr(fmt.Errorf("nomad event stream: %w", err))
				sleep(ctx, 2*time.Second)
				continue
			}
			signal() // whatever happened while not following
			for evs := range stream {
				if evs.Err != nil {
					if ctx.Err() == nil {
						r.onErr(fmt.Errorf("nomad event stream: %w", evs.Err))
					}
					break
				}
				if evs.IsHeartbeat() {
					continue
				}
				index = evs.Index
				for i := range evs.Events {
					if interesting(&evs.Events[i]) {
						signal()
					}
				}
			}
			sleep(ctx, time.Second)
		}
	}()
	return ch
}

// interesting: a node marked down, or an allocation lost.
func interesting(ev *nomadapi.Event) bool {
	switch ev.Topic {
	case nomadapi.TopicNode:
		n, err := ev.Node()
		return err == nil && n != nil && n.Status == nomadapi.NodeStatusDown
	case nomadapi.TopicAllocation:
		a, err := ev.Allocation()
		return err == nil && a != nil && a.ClientStatus == nomadapi.AllocClientStatusLost
	}
	return false
}

// DeadClaims lists the claims on this plugin's volumes (any namespace)
// held by a lost allocation on a node Nomad has marked down.
func (r *Releaser) DeadClaims(ctx context.Context) ([]plugin.DeadClaim, error) {
	stubs, _, err := r.api.CSIVolumes().List((&nomadapi.QueryOptions{Namespace: "*"}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list csi volumes: %w", err)
	}
	down := map[string]bool{}
	nodeDown := func(id string) (bool, error) {
		if d, ok := down[id]; ok {
			return d, nil
		}
		n, _, err := r.api.Nodes().Info(id, (&nomadapi.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return false, fmt.Errorf("node %s: %w", id, err)
		}
		down[id] = n.Status == nomadapi.NodeStatusDown
		return down[id], nil
	}
	var out []plugin.DeadClaim
	for _, s := range stubs {
		if s.Provider != r.provider || s.CurrentWriters+s.CurrentReaders == 0 {
			continue
		}
		vol, _, err := r.api.CSIVolumes().Info(s.ID, (&nomadapi.QueryOptions{Namespace: s.Namespace}).WithContext(ctx))
		if err != nil {
			return out, fmt.Errorf("csi volume %s: %w", s.ID, err)
		}
		for _, a := range vol.Allocations {
			if a.ClientStatus != nomadapi.AllocClientStatusLost {
				continue
			}
			d, err := nodeDown(a.NodeID)
			if err != nil {
				return out, err
			}
			if d {
				out = append(out, plugin.DeadClaim{Namespace: s.Namespace, Volume: s.ID, NodeID: a.NodeID, Alloc: a.ID})
			}
		}
	}
	return out, nil
}

// Detach asks Nomad to release node's claims on volume.
func (r *Releaser) Detach(ctx context.Context, dc plugin.DeadClaim) error {
	w := (&nomadapi.WriteOptions{Namespace: dc.Namespace}).WithContext(ctx)
	if err := r.api.CSIVolumes().Detach(dc.Volume, dc.NodeID, w); err != nil {
		return fmt.Errorf("detach volume %s from node %s: %w", dc.Volume, dc.NodeID, err)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
