package telemetry

// Metric names as Prometheus shows them. go-metrics keys are these split
// at the first two underscores of the part after "saddlebag_" (the sink
// joins a key's parts with '_' and prefixes the service name).
const (
	// Per volume, from the engines (label volume; the io ones also op).
	VolumeIORequests      = "saddlebag_volume_io_requests_total"
	VolumeIOErrors        = "saddlebag_volume_io_errors_total"
	VolumeIOBytes         = "saddlebag_volume_io_bytes_total"
	VolumeIOLatency       = "saddlebag_volume_io_latency_seconds"
	VolumeReplicasInSync  = "saddlebag_volume_replicas_in_sync"
	VolumeReplicasWanted  = "saddlebag_volume_replicas_wanted"
	VolumeReplicas        = "saddlebag_volume_replicas"
	VolumeResyncing       = "saddlebag_volume_replicas_resyncing"
	VolumeMinInSync       = "saddlebag_volume_min_in_sync"
	VolumeResyncRemaining = "saddlebag_volume_resync_remaining_bytes"
	VolumeResyncRate      = "saddlebag_volume_resync_rate_bytes_per_second"
	VolumeEpoch           = "saddlebag_volume_epoch"
	VolumeSize            = "saddlebag_volume_size_bytes"
	VolumeHeld            = "saddlebag_volume_held"
	VolumeFenced          = "saddlebag_volume_fenced"
	VolumeLeaseHolds      = "saddlebag_volume_lease_holds_total"
	VolumeFencings        = "saddlebag_volume_fencings_total"
	VolumeReplicaDrops    = "saddlebag_volume_replica_drops_total"

	// Per node (go-metrics gauges, sampled).
	NodeStagedVolumes  = "saddlebag_node_staged_volumes"
	NodePrimaryVolumes = "saddlebag_node_primary_volumes"
	NodeCapacity       = "saddlebag_node_capacity_bytes"
	NodeFree           = "saddlebag_node_free_bytes"

	// CSI calls, on both processes (labels service, method, code; the
	// duration summary service and method).
	CSICalls        = "saddlebag_csi_calls_total"
	CSICallDuration = "saddlebag_csi_call_duration_seconds"

	// Controller.
	ControllerPlacementFailures = "saddlebag_controller_placement_failures_total"
	ControllerActive            = "saddlebag_controller_active"
)
