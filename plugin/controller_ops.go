package plugin

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin/internal/rpc"
	"github.com/saddlebag/saddlebag/plugin/reconcile"
	"github.com/saddlebag/saddlebag/replication/wire"
	"github.com/saddlebag/saddlebag/scheduler"
)

// ControllerPublishVolume records that the volume is published to a node.
// A volume is published to one node at a time; publishing it to another
// node is refused (FailedPrecondition) while the first is healthy and
// holds the primary lock, and otherwise fences the first (failover must
// not wait for Nomad's claim GC, docs/architecture.md, "What we measured about Nomad").
func (c *Controller) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	id, node := req.GetVolumeId(), req.GetNodeId()
	if err := rpc.CheckVolumeID("volume_id", id); err != nil {
		return nil, err
	}
	if err := rpc.CheckNodeID("node_id", node); err != nil {
		return nil, err
	}
	if !c.Active() {
		return forward(ctx, c, "ControllerPublishVolume", req, csi.ControllerClient.ControllerPublishVolume)
	}
	why, err := rpc.CheckCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, rpc.Errf(codes.InvalidArgument, "%v", err)
	}
	if why != "" {
		return nil, rpc.Errf(codes.InvalidArgument, "%s", why)
	}
	lease, unlock, err := c.begin(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, index, err := c.cfg.Client.GetVolume(ctx, id)
	if err != nil {
		return nil, rpc.ToStatus(err, "read volume")
	}
	if rec.State != leader.VolumeReady {
		return nil, rpc.Errf(codes.NotFound, "volume %s is %s", id, rec.State)
	}
	if why := rpc.CapabilityFits(req.GetVolumeCapability(), rec); why != "" {
		return nil, rpc.Errf(codes.AlreadyExists, "%s", why)
	}
	nodes, vols, err := reconcile.Snapshot(ctx, c.cfg.Client)
	if err != nil {
		return nil, rpc.ToStatus(err, "read nodes")
	}
	byName := reconcile.NodeMap(nodes)
	target, ok := byName[node]
	if !ok {
		return nil, rpc.Errf(codes.NotFound, "node %s is not a saddlebag node", node)
	}
	if slices.Contains(rec.Published, node) {
		return &csi.ControllerPublishVolumeResponse{}, nil
	}
	if target.MaxVolumes > 0 {
		n := 0
		for _, v := range vols {
			if slices.Contains(v.Published, node) {
				n++
			}
		}
		if n >= target.MaxVolumes {
			return nil, rpc.Errf(codes.ResourceExhausted, "node %s already has %d volumes published, its maximum", node, n)
		}
	}
	holder, err := c.cfg.Client.ReadPrimary(ctx, id)
	if err != nil {
		return nil, rpc.ToStatus(err, "read primary lock")
	}
	for _, other := range rec.Published {
		if holder.Node == other && byName[other].Healthy {
			return nil, rpc.Errf(codes.FailedPrecondition, "volume %s is published to node %s, which is healthy and serves it; unpublish it there first", id, other)
		}
		if holder.Node == other {
			rec.Fenced = fence(rec.Fenced, other, holder.Epoch)
			c.log.Warn("fencing the volume's unhealthy primary node", "volume_id", id, "node", other, "epoch", holder.Epoch)
		}
	}
	rec.Published = []string{node}
	delete(rec.Fenced, node)
	if _, err := c.cfg.Client.PutVolume(ctx, rec, index, lease); err != nil {
		return nil, rpc.ToStatus(err, "record publication")
	}
	return &csi.ControllerPublishVolumeResponse{}, nil
}

func fence(m map[string]uint64, node string, epoch uint64) map[string]uint64 {
	if m == nil {
		m = map[string]uint64{}
	}
	m[node] = epoch
	return m
}

// ControllerUnpublishVolume ends a node's hold on the volume: it is no
// longer published there, and if the node is still the volume's primary
// it is fenced: the record names the node and its epoch, and the node
// agent, which follows the record, fences its engine and releases the
// lease. The call returns when the node no longer holds the lease (a node
// that is down lost it with its session), at once when Consul reports
// the node failed (the fence is recorded; NodeStageVolume on the next
// node waits for the lease), or Unavailable after FenceWait.
func (c *Controller) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	id, node := req.GetVolumeId(), req.GetNodeId()
	if err := rpc.CheckVolumeID("volume_id", id); err != nil {
		return nil, err
	}
	if node != "" { // empty: unpublish from every node (CSI)
		if err := rpc.CheckNodeID("node_id", node); err != nil {
			return nil, err
		}
	}
	if !c.Active() {
		return forward(ctx, c, "ControllerUnpublishVolume", req, csi.ControllerClient.ControllerUnpublishVolume)
	}
	lease, unlock, err := c.begin(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, index, err := c.cfg.Client.GetVolume(ctx, id)
	if errors.Is(err, leader.ErrNotFound) {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	if err != nil {
		return nil, rpc.ToStatus(err, "read volume")
	}
	holder, err := c.cfg.Client.ReadPrimary(ctx, id)
	if err != nil {
		return nil, rpc.ToStatus(err, "read primary lock")
	}
	changed := false
	if node == "" || slices.Contains(rec.Published, node) {
		rec.Published = slices.DeleteFunc(rec.Published, func(n string) bool { return node == "" || n == node })
		changed = true
	}
	fenced := holder.Node != "" && (node == "" || holder.Node == node)
	if fenced && rec.Fenced[holder.Node] != holder.Epoch {
		rec.Fenced = fence(rec.Fenced, holder.Node, holder.Epoch)
		changed = true
	}
	if changed {
		if _, err := c.cfg.Client.PutVolume(ctx, rec, index, lease); err != nil {
			return nil, rpc.ToStatus(err, "record unpublication")
		}
	}
	if !fenced {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	// A node Consul reports failed is not waited for. If the failing
	// check is one its session is tied to (serfHealth, its TTL check)
	// Consul has invalidated the session already; otherwise the node, if
	// alive, follows the fence and releases the lease. Either way nobody
	// serves until the lease is free (and lock-delay has passed after an
	// invalidation), and the next primary's NodeStageVolume waits for
	// that. Waiting here only held Nomad's claim, which Nomad's client
	// retries with a doubling back-off (issue 12).
	if nodes, err := c.cfg.Client.ListNodes(ctx); err == nil {
		for _, n := range nodes {
			if n.Node == holder.Node && !n.Healthy {
				c.log.Info("fenced a failed node: the next primary waits for its lease", "volume_id", id, "node", holder.Node,
					"epoch", holder.Epoch, "why", n.Why)
				return &csi.ControllerUnpublishVolumeResponse{}, nil
			}
		}
	}
	c.log.Info("fencing node: waiting for it to release the volume", "volume_id", id, "node", holder.Node, "epoch", holder.Epoch)
	deadline := time.Now().Add(c.cfg.FenceWait)
	for time.Now().Before(deadline) {
		h, err := c.cfg.Client.ReadPrimary(ctx, id)
		if err == nil && (h.Node != holder.Node || h.Epoch != holder.Epoch) {
			return &csi.ControllerUnpublishVolumeResponse{}, nil
		}
		select {
		case <-ctx.Done():
			return nil, rpc.ToStatus(ctx.Err(), "wait for fence")
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil, rpc.Errf(codes.Unavailable, "node %s still holds volume %s at epoch %d: retry", holder.Node, id, holder.Epoch)
}

// ValidateVolumeCapabilities confirms the capabilities a volume supports.
func (c *Controller) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if err := rpc.CheckVolumeID("volume_id", id); err != nil {
		return nil, err
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, rpc.Errf(codes.InvalidArgument, "volume_capabilities are required")
	}
	var whys []string
	for _, vc := range req.GetVolumeCapabilities() {
		why, err := rpc.CheckCapability(vc)
		if err != nil {
			return nil, rpc.Errf(codes.InvalidArgument, "%v", err)
		}
		if why != "" {
			whys = append(whys, why)
		}
	}
	rec, _, err := c.cfg.Client.GetVolume(ctx, id)
	if err != nil {
		return nil, rpc.ToStatus(err, "read volume")
	}
	for _, vc := range req.GetVolumeCapabilities() {
		if why := rpc.CapabilityFits(vc, rec); why != "" {
			whys = append(whys, why)
		}
	}
	if len(whys) > 0 {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: strings.Join(whys, "; ")}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters()}}, nil
}

// listTokenPrefix marks ListVolumes tokens: "after:<last volume id>".
const listTokenPrefix = "after:"

// ListVolumes lists ready volumes in id order, and volumes whose create
// has not completed with volume context saying so (stale_create.go).
// A page's next_token names the last volume returned, so volumes deleted
// between pages do not shift the next page; a token this plugin did not
// make is Aborted.
func (c *Controller) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, rpc.Errf(codes.InvalidArgument, "max_entries is negative")
	}
	after := ""
	if tok := req.GetStartingToken(); tok != "" {
		var ok bool
		after, ok = strings.CutPrefix(tok, listTokenPrefix)
		if !ok || wire.ValidateVolumeID(after) != nil {
			return nil, rpc.Errf(codes.Aborted, "starting_token %q was not returned by ListVolumes", tok)
		}
	}
	nodes, vols, err := reconcile.Snapshot(ctx, c.cfg.Client)
	if err != nil {
		return nil, rpc.ToStatus(err, "list volumes")
	}
	sort.Slice(vols, func(i, j int) bool { return vols[i].ID < vols[j].ID })
	byName := reconcile.NodeMap(nodes)
	resp := &csi.ListVolumesResponse{}
	for _, v := range vols {
		if v.State == leader.VolumeDeleting || v.ID <= after {
			continue
		}
		if max := int(req.GetMaxEntries()); max > 0 && len(resp.Entries) == max {
			resp.NextToken = listTokenPrefix + resp.Entries[len(resp.Entries)-1].Volume.VolumeId
			break
		}
		e := &csi.ListVolumesResponse_Entry{Volume: csiVolume(v, byName)}
		if v.State != leader.VolumeReady {
			c.markPending(e.Volume, v)
		}
		resp.Entries = append(resp.Entries, e)
	}
	return resp, nil
}

// GetCapacity returns the largest volume that could be created now with
// the given parameters inside the given topology: the free space of the
// node ranked replicas-th by free space among the healthy nodes there.
func (c *Controller) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	for _, vc := range req.GetVolumeCapabilities() {
		why, err := rpc.CheckCapability(vc)
		if err != nil {
			return nil, rpc.Errf(codes.InvalidArgument, "%v", err)
		}
		if why != "" {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	p, err := volspec.ParseParams(req.GetParameters())
	if err != nil {
		return nil, rpc.ToStatus(err, "parameters")
	}
	nodes, vols, err := reconcile.Snapshot(ctx, c.cfg.Client)
	if err != nil {
		return nil, rpc.ToStatus(err, "read nodes")
	}
	var seg []map[string]string
	if t := req.GetAccessibleTopology(); t != nil && len(t.GetSegments()) > 0 {
		seg = []map[string]string{maps.Clone(t.GetSegments())}
	}
	avail := scheduler.Capacity(reconcile.SchedulerNodes(nodes, vols, nil), scheduler.Request{Volume: "capacity", Replicas: p.Replicas, Requisite: seg})
	return &csi.GetCapacityResponse{AvailableCapacity: avail}, nil
}
