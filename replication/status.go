package replication

import "time"

// ResyncStatus is one replica's resync progress.
type ResyncStatus struct {
	Mode            string  `json:"mode"`
	Finished        bool    `json:"finished"`
	TotalBytes      int64   `json:"total_bytes"`
	DoneBytes       int64   `json:"done_bytes"`
	SentBytes       int64   `json:"sent_bytes"`
	RepairedExtents int64   `json:"repaired_extents,omitempty"`
	Percent         float64 `json:"percent"`
	BytesPerSec     float64 `json:"bytes_per_sec"`
	ETASeconds      float64 `json:"eta_seconds"`
	// Seconds is how long the resync has run (or took, once finished).
	Seconds float64 `json:"seconds"`
}

func (p *resyncProgress) status() ResyncStatus {
	st := ResyncStatus{Mode: string(p.mode), Finished: p.finished.Load(), TotalBytes: p.total.Load(), DoneBytes: p.done.Load(),
		SentBytes: p.sent.Load(), RepairedExtents: p.repaired.Load()}
	if st.TotalBytes > 0 {
		st.Percent = 100 * float64(st.DoneBytes) / float64(st.TotalBytes)
	} else if st.Finished {
		st.Percent = 100
	}
	st.Seconds = time.Since(p.started).Seconds()
	if st.Finished {
		st.Seconds = time.Duration(p.elapsed.Load()).Seconds()
	}
	if st.Seconds > 0 {
		st.BytesPerSec = float64(st.DoneBytes) / st.Seconds
	}
	if st.BytesPerSec > 0 && !st.Finished {
		st.ETASeconds = float64(st.TotalBytes-st.DoneBytes) / st.BytesPerSec
	}
	return st
}

// ReplicaStatus is one replica's state in EngineStatus.
type ReplicaStatus struct {
	Addr         string       `json:"addr"`
	Local        bool         `json:"local,omitempty"`
	State        ReplicaState `json:"state"`
	Reason       string       `json:"reason,omitempty"`
	MissingBytes int64        `json:"missing_bytes,omitempty"`
	// Generation is the membership generation the replica reported when
	// it was last connected.
	Generation uint64        `json:"generation"`
	Resync     *ResyncStatus `json:"resync,omitempty"`
}

// ReconcileStatus says what the start-up reconciliation of hot extents did.
type ReconcileStatus struct {
	Extents        int64 `json:"extents"`
	ComparedBytes  int64 `json:"compared_bytes"`
	RepairedBlocks int64 `json:"repaired_blocks"`
}

// EngineStatus is a snapshot of the engine for operators.
type EngineStatus struct {
	Volume     string          `json:"volume"`
	Size       int64           `json:"size"`
	Epoch      uint64          `json:"epoch"`
	Generation uint64          `json:"generation"` // of the in-sync set the members hold
	Fenced     bool            `json:"fenced"`
	Held       bool            `json:"held"`
	InSync     int             `json:"in_sync"`
	MinInSync  int             `json:"min_in_sync"`
	HotExtents int             `json:"hot_extents"`
	Reconcile  ReconcileStatus `json:"reconcile"`
	Replicas   []ReplicaStatus `json:"replicas"`
}

// Status returns a snapshot of the engine's state.
func (e *Engine) Status() EngineStatus {
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	st := EngineStatus{Volume: e.cfg.Volume, Size: e.cfg.Size, Epoch: e.cfg.Epoch, Generation: e.gen, Fenced: e.fenced.Load(),
		Held: e.hold.Load() != nil, MinInSync: e.cfg.MinInSync, HotExtents: len(e.al.list()),
		Reconcile: ReconcileStatus{Extents: e.stats.reconcileExtents.Load(), ComparedBytes: e.stats.reconcileBytes.Load(),
			RepairedBlocks: e.stats.reconcileBlocks.Load()}}
	for _, p := range e.peers {
		rs := ReplicaStatus{Addr: p.cfg.Addr, Local: p.cfg.Local, State: p.state, Reason: p.reason, Generation: p.open.Membership.Gen}
		if p.dirty != nil {
			rs.MissingBytes = p.dirty.Count() * BlockSize
		}
		if p.resync != nil {
			r := p.resync.status()
			rs.Resync = &r
		}
		st.Replicas = append(st.Replicas, rs)
		if p.state == StateInSync {
			st.InSync++
		}
	}
	return st
}
