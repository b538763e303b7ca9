package plugin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/internal/telemetry"
	"github.com/saddlebag/saddlebag/internal/volkey"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin/internal/rpc"
	"github.com/saddlebag/saddlebag/plugin/reconcile"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/scheduler"
)

// ControllerConfig configures the Controller service.
type ControllerConfig struct {
	Client *leader.Client
	// Agent is the controller's Consul registration (service
	// saddlebag-controller); its session holds the leadership lock.
	Agent *leader.Agent
	// ForwardAddr is the host:port where this instance serves the
	// Controller service to standbys (ServeForward); it is published in
	// the leadership lock while this instance is active. "" publishes
	// none, and standbys then cannot forward to this instance.
	ForwardAddr string
	// ForwardCreds secure the calls this instance forwards, while a
	// standby, to the active one: mutual TLS as saddlebag-controller.
	// Default (nil): plain gRPC, for --insecure and tests.
	ForwardCreds credentials.TransportCredentials
	// ReplicaTimeout bounds each request to a replica server (create,
	// delete). Default 10s.
	ReplicaTimeout time.Duration
	// Dial connects to replica servers (mutual TLS; nil: plain TCP, for
	// --insecure and tests).
	Dial replication.Dialer
	// Grace is how long a replica's node may be down before the replica
	// is replaced on another node. Default 5m.
	Grace time.Duration
	// ScanEvery is how often the active controller looks for replicas to
	// replace. Default 5s.
	ScanEvery time.Duration
	// FenceWait bounds how long ControllerUnpublishVolume waits for a
	// fenced node that Consul reports healthy to release the volume
	// (a node Consul reports failed is not waited for). Default 20s.
	FenceWait time.Duration
	// CreateTimeout is how long a volume may stay "creating" (a
	// CreateVolume interrupted by a crash and never repeated) before the
	// active controller removes its replicas and record. Default 5m.
	CreateTimeout time.Duration
	Log           hclog.Logger
	// Now is the clock of the background passes (plugin/reconcile;
	// default time.Now).
	Now func() time.Time
	// KDF is the argon2id cost an encrypted volume's passphrase is
	// stretched with (volkey.DefaultParams when zero). It is stored with
	// the volume, so changing it affects only volumes created later.
	KDF volkey.Params
}

// Controller is the CSI Controller service. Every mutating RPC needs the
// leadership lock (Run acquires it); a standby forwards them to the
// active controller's ForwardAddr, read from the lock, and returns its
// answer (forward.go); it answers Unavailable only when there is no active
// controller to forward to, or when the call was already forwarded once.
// Read-only RPCs are answered by either.
//
// Contract: RPCs may be called concurrently; they are serialised per
// volume (another RPC on a busy volume gets Aborted).
type Controller struct {
	csi.UnimplementedControllerServer
	cfg   ControllerConfig
	log   hclog.Logger
	locks rpc.VolumeLocks
	fwd   *forwarder

	mu    sync.Mutex
	lease *leader.Lease // held leadership, nil on a standby
}

var _ csi.ControllerServer = (*Controller)(nil)

// NewController validates cfg and returns the service; Run makes it
// compete for leadership.
func NewController(cfg ControllerConfig) (*Controller, error) {
	if cfg.Client == nil || cfg.Agent == nil {
		return nil, fmt.Errorf("%w: controller needs a consul client and agent", leader.ErrInvalid)
	}
	if cfg.ReplicaTimeout == 0 {
		cfg.ReplicaTimeout = 10 * time.Second
	}
	if cfg.Grace == 0 {
		cfg.Grace = 5 * time.Minute
	}
	if cfg.ScanEvery == 0 {
		cfg.ScanEvery = 5 * time.Second
	}
	if cfg.FenceWait == 0 {
		cfg.FenceWait = 20 * time.Second
	}
	if cfg.CreateTimeout == 0 {
		cfg.CreateTimeout = 5 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.KDF == (volkey.Params{}) {
		cfg.KDF = volkey.DefaultParams
	}
	if err := cfg.KDF.Check(); err != nil {
		return nil, fmt.Errorf("%w: %v", leader.ErrInvalid, err)
	}
	if cfg.ForwardCreds == nil {
		cfg.ForwardCreds = insecure.NewCredentials()
	}
	log := cfg.Log.Named("controller")
	return &Controller{cfg: cfg, log: log, fwd: &forwarder{client: cfg.Client, log: log.Named("forward"), creds: cfg.ForwardCreds}}, nil
}

// Close ends the connection to the active controller a standby keeps for
// forwarding. Call it once the gRPC servers have stopped.
func (c *Controller) Close() { c.fwd.close() }

// Active reports whether this instance holds the leadership lock.
func (c *Controller) Active() bool {
	_, err := c.leadership()
	return err == nil
}

// leadership returns the held leadership lease, or Unavailable.
func (c *Controller) leadership() (*leader.Lease, error) {
	c.mu.Lock()
	l := c.lease
	c.mu.Unlock()
	if l == nil || l.Err() != nil {
		return nil, rpc.Errf(codes.Unavailable, "this controller is a standby (another instance holds the leadership lock): retry")
	}
	return l, nil
}

// begin is the common start of a mutating RPC on volume id: leadership,
// then the volume's lock.
func (c *Controller) begin(id string) (*leader.Lease, func(), error) {
	lease, err := c.leadership()
	if err != nil {
		return nil, nil, err
	}
	unlock, err := c.locks.Lock(id)
	if err != nil {
		return nil, nil, err
	}
	return lease, unlock, nil
}

// ControllerGetCapabilities reports what the controller implements.
func (c *Controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// volumeSize picks the size for a capacity range by the rule the spec
// checks use (volspec.Size): required_bytes rounded up to 4 KiB,
// volspec.DefaultSize (capped by limit_bytes) when none is required, and
// at least what the volume's file system needs (fsType; "" when every
// capability is a raw block device).
func volumeSize(cr *csi.CapacityRange, fsType string) (int64, error) {
	req, limit := cr.GetRequiredBytes(), cr.GetLimitBytes()
	if req < 0 || limit < 0 {
		return 0, rpc.Errf(codes.InvalidArgument, "capacity range has a negative bound")
	}
	size, err := volspec.Size(req, limit, fsType)
	var se *volspec.SizeError
	switch {
	case errors.As(err, &se) && se.Problem == volspec.RangeInverted:
		return 0, rpc.Errf(codes.InvalidArgument, "capacity range [required_bytes %d, limit_bytes %d]: %v", req, limit, err)
	case err != nil:
		return 0, rpc.Errf(codes.OutOfRange, "capacity range [required_bytes %d, limit_bytes %d]: %v", req, limit, err)
	}
	return size, nil
}

// mountedFS is the file system a volume with capabilities caps holds:
// fsType when one of them mounts it, "" when all are raw block devices.
func mountedFS(fsType string, caps []*csi.VolumeCapability) string {
	for _, c := range caps {
		if c.GetMount() != nil {
			return fsType
		}
	}
	return ""
}

// CreateVolume places a new volume's replicas and makes them, or returns
// the volume already created under the same name.
func (c *Controller) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if err := rpc.CheckName(name); err != nil {
		return nil, err
	}
	if !c.Active() {
		return forward(ctx, c, "CreateVolume", req, csi.ControllerClient.CreateVolume)
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, rpc.Errf(codes.InvalidArgument, "volume_capabilities are required")
	}
	for _, vc := range req.GetVolumeCapabilities() {
		why, err := rpc.CheckCapability(vc)
		if err != nil {
			return nil, rpc.Errf(codes.InvalidArgument, "%v", err)
		}
		if why != "" {
			return nil, rpc.Errf(codes.InvalidArgument, "%s", why)
		}
	}
	if req.GetVolumeContentSource() != nil {
		return nil, rpc.Errf(codes.InvalidArgument, "volume content source (snapshot or clone) is not supported")
	}
	params, err := volspec.ParseParams(req.GetParameters())
	if err != nil {
		return nil, rpc.ToStatus(err, "parameters")
	}
	if field, msg := volspec.EncryptionProblem(params, req.GetSecrets()); field != "" {
		return nil, rpc.Errf(codes.InvalidArgument, "%s: %s", field, msg)
	}
	fsType, err := resolveFSType(params, req.GetVolumeCapabilities())
	if err != nil {
		return nil, rpc.Errf(codes.InvalidArgument, "%v", err)
	}
	size, err := volumeSize(req.GetCapacityRange(), mountedFS(fsType, req.GetVolumeCapabilities()))
	if err != nil {
		return nil, err
	}
	id := volumeIDFor(name)
	lease, unlock, err := c.begin(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	log := c.log.With("volume_id", id)

	rec, index, err := c.cfg.Client.GetVolume(ctx, id)
	switch {
	case err == nil:
		if why := compatible(rec, name, size, req.GetCapacityRange(), params, fsType); why != "" {
			return nil, rpc.Errf(codes.AlreadyExists, "volume %q exists and differs: %s", name, why)
		}
		if err := rpc.CheckPassphrase(rec, req.GetSecrets()); err != nil {
			return nil, err
		}
		switch rec.State {
		case leader.VolumeReady:
			return c.createResponse(ctx, rec)
		case leader.VolumeDeleting:
			return nil, rpc.Errf(codes.Aborted, "volume %q is being deleted: retry", name)
		}
		log.Info("resuming an interrupted create", "replicas", rec.Replicas)
	case errors.Is(err, leader.ErrNotFound):
		rec, index, err = c.place(ctx, lease, id, name, size, params, fsType, req.GetAccessibilityRequirements(), req.GetSecrets())
		if err != nil {
			return nil, err
		}
	default:
		return nil, rpc.ToStatus(err, "read volume record")
	}

	if err := c.makeReplicas(ctx, rec); err != nil {
		log.Error("creating replicas failed: undoing", "error", err)
		if uerr := c.undoCreate(ctx, lease, rec, index); uerr != nil {
			log.Error("undo create failed: a retry resumes it", "error", uerr)
		}
		return nil, rpc.Errf(codes.Unavailable, "create volume %q: %v", name, err)
	}
	// The first in-sync record (generation 0, every replica) before the
	// volume is ready: the first primary may then start with one replica's
	// node down, which it could not tell from a lost record otherwise.
	addrs := make([]string, len(rec.Replicas))
	for i, r := range rec.Replicas {
		addrs[i] = r.Addr
	}
	if err := c.cfg.Client.InitInSync(ctx, id, addrs); err != nil {
		return nil, rpc.ToStatus(err, "write the first in-sync record")
	}
	rec.State = leader.VolumeReady // the "completed" marker, written last
	if _, err := c.cfg.Client.PutVolume(ctx, rec, index, lease); err != nil {
		return nil, rpc.ToStatus(err, "mark volume ready")
	}
	log.Info("volume created", "size", size, "replicas", rec.Replicas, "fs_type", fsType)
	return c.createResponse(ctx, rec)
}

// compatible says why an existing record does not match a CreateVolume
// request ("" when it does).
func compatible(rec leader.VolumeRecord, name string, size int64, cr *csi.CapacityRange, p volspec.Params, fsType string) string {
	if rec.Name != "" && rec.Name != name {
		return fmt.Sprintf("volume id %s belongs to name %q", rec.ID, rec.Name)
	}
	if rec.Spec.SizeBytes < cr.GetRequiredBytes() || cr.GetLimitBytes() > 0 && rec.Spec.SizeBytes > cr.GetLimitBytes() {
		return fmt.Sprintf("its size %d is outside the capacity range asked", rec.Spec.SizeBytes)
	}
	if cr.GetRequiredBytes() == 0 && cr.GetLimitBytes() == 0 && rec.Spec.SizeBytes != size {
		return fmt.Sprintf("its size %d is not the default %d", rec.Spec.SizeBytes, size)
	}
	if rec.Spec.FSType != fsType {
		return fmt.Sprintf("fs_type %s, asked %s", rec.Spec.FSType, fsType)
	}
	old, err := volspec.ParseParams(rec.Spec.Parameters)
	p.FSType = fsType // stored resolved
	if err != nil || old != p {
		return "its parameters differ"
	}
	return ""
}

// place chooses the replica nodes and writes the record in state
// creating. A shortfall is ResourceExhausted and writes nothing.
func (c *Controller) place(ctx context.Context, lease *leader.Lease, id, name string, size int64, p volspec.Params,
	fsType string, tr *csi.TopologyRequirement, secrets map[string]string) (leader.VolumeRecord, uint64, error) {
	nodes, vols, err := reconcile.Snapshot(ctx, c.cfg.Client)
	if err != nil {
		return leader.VolumeRecord{}, 0, rpc.ToStatus(err, "read nodes")
	}
	// Not where a deleted volume of this id left a replica: the replica
	// server would reuse its data.
	tombstoned, err := reconcile.TombstonedNodes(ctx, c.cfg.Client, id)
	if err != nil {
		return leader.VolumeRecord{}, 0, rpc.ToStatus(err, "read tombstones")
	}
	chosen, err := scheduler.PlaceVolume(reconcile.SchedulerNodes(nodes, vols, nil), scheduler.Request{
		Volume: id, SizeBytes: size, Replicas: p.Replicas, Spread: p.Spread,
		Requisite: topologyOf(tr.GetRequisite()), Preferred: topologyOf(tr.GetPreferred()), Exclude: tombstoned,
	})
	if err != nil {
		telemetry.PlacementFailure("create")
		return leader.VolumeRecord{}, 0, rpc.ToStatus(err, "place replicas")
	}
	byName := reconcile.NodeMap(nodes)
	rec := leader.VolumeRecord{ID: id, Name: name, State: leader.VolumeCreating,
		Spec: leader.VolumeSpec{SizeBytes: size, Replicas: p.Replicas, FSType: fsType, Parameters: paramsMap(p, fsType)}}
	if p.Encrypted {
		// A random data key, sealed under the passphrase: the record
		// holds only the sealed key; the data key itself is not kept.
		kr, key, err := volkey.New(id, secrets[volspec.SecretPassphrase], c.cfg.KDF)
		clear(key)
		if err != nil {
			return rec, 0, rpc.Errf(codes.InvalidArgument, "secrets.%s: %v", volspec.SecretPassphrase, err)
		}
		rec.Encryption = &kr
	}
	for _, n := range chosen {
		rec.Replicas = append(rec.Replicas, leader.ReplicaRecord{Node: n, Addr: byName[n].ReplicaAddr, State: leader.ReplicaReady})
	}
	index, err := c.cfg.Client.PutVolume(ctx, rec, 0, lease)
	if err != nil {
		return rec, 0, rpc.ToStatus(err, "write volume record")
	}
	return rec, index, nil
}

// paramsMap is the normalised parameter set stored with a volume.
func paramsMap(p volspec.Params, fsType string) map[string]string {
	m := map[string]string{
		volspec.ParamReplicas: fmt.Sprint(p.Replicas), volspec.ParamFSType: fsType,
		volspec.ParamMinInSync: fmt.Sprint(p.MinInSync),
	}
	if p.Spread != "" {
		m[volspec.ParamSpread] = p.Spread
	}
	if p.Encrypted {
		m[volspec.ParamEncrypted] = "true"
	}
	return m
}

// makeReplicas creates the record's replicas on their nodes (idempotent).
func (c *Controller) makeReplicas(ctx context.Context, rec leader.VolumeRecord) error {
	var errs []error
	for _, r := range rec.Replicas {
		if _, err := replication.CreateReplica(ctx, c.cfg.Dial, r.Addr, rec.ID, rec.Spec.SizeBytes, c.cfg.ReplicaTimeout); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", r.Node, err))
		}
	}
	return errors.Join(errs...)
}

// undoCreate removes what a failed create made: the replicas it could
// reach, then the record (only when every replica is gone).
func (c *Controller) undoCreate(ctx context.Context, lease *leader.Lease, rec leader.VolumeRecord, index uint64) error {
	ctx = context.WithoutCancel(ctx)
	if err := reconcile.DeleteReplicas(ctx, c.cfg.Dial, rec, c.cfg.ReplicaTimeout); err != nil {
		return err
	}
	return c.cfg.Client.DeleteVolume(ctx, rec.ID, index, lease)
}

func (c *Controller) createResponse(ctx context.Context, rec leader.VolumeRecord) (*csi.CreateVolumeResponse, error) {
	nodes, err := c.cfg.Client.ListNodes(ctx)
	if err != nil {
		return nil, rpc.ToStatus(err, "read nodes")
	}
	return &csi.CreateVolumeResponse{Volume: csiVolume(rec, reconcile.NodeMap(nodes))}, nil
}

// csiVolume describes a volume to the CO: accessible from the nodes that
// hold its replicas.
func csiVolume(rec leader.VolumeRecord, nodes map[string]leader.NodeState) *csi.Volume {
	v := &csi.Volume{VolumeId: rec.ID, CapacityBytes: rec.Spec.SizeBytes, VolumeContext: maps.Clone(rec.Spec.Parameters)}
	for _, r := range rec.Replicas {
		if r.State == leader.ReplicaLost {
			continue
		}
		v.AccessibleTopology = append(v.AccessibleTopology, &csi.Topology{Segments: scheduler.NodeSegments(r.Node, nodes[r.Node].Labels)})
	}
	return v
}

// DeleteVolume removes a volume's replicas from their nodes, then its
// record. An unknown volume is deleted already. A replica on a node
// Consul reports down is left with a tombstone, and removed when its node
// is back (tombstones.go).
func (c *Controller) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := rpc.CheckVolumeID("volume_id", id); err != nil {
		return nil, err
	}
	if !c.Active() {
		return forward(ctx, c, "DeleteVolume", req, csi.ControllerClient.DeleteVolume)
	}
	lease, unlock, err := c.begin(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, index, err := c.cfg.Client.GetVolume(ctx, id)
	if errors.Is(err, leader.ErrNotFound) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, rpc.ToStatus(err, "read volume record")
	}
	holder, err := c.cfg.Client.ReadPrimary(ctx, id)
	if err != nil {
		return nil, rpc.ToStatus(err, "read primary lock")
	}
	if holder.Node != "" {
		return nil, rpc.Errf(codes.FailedPrecondition, "volume %s is in use: staged on node %s (epoch %d)", id, holder.Node, holder.Epoch)
	}
	if rec.State != leader.VolumeDeleting {
		rec.State = leader.VolumeDeleting
		if index, err = c.cfg.Client.PutVolume(ctx, rec, index, lease); err != nil {
			return nil, rpc.ToStatus(err, "mark volume deleting")
		}
	}
	left, err := c.removeReplicas(ctx, rec)
	if err != nil {
		return nil, err
	}
	// The record goes, and a tombstone stays for each replica on a node
	// that is down, in one transaction (tombstones.go).
	if err := c.cfg.Client.DeleteVolumeLeaving(ctx, id, index, lease, left); err != nil {
		return nil, rpc.ToStatus(err, "delete volume record")
	}
	if len(left) > 0 {
		c.log.Warn("volume deleted; replicas on nodes that are down are removed when their node is back", "volume_id", id, "left", left)
		return &csi.DeleteVolumeResponse{}, nil
	}
	c.log.Info("volume deleted", "volume_id", id)
	return &csi.DeleteVolumeResponse{}, nil
}
