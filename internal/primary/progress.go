package primary

import (
	"context"
	"errors"
	"math"
	"reflect"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication"
)

// ProgressInterval is how often PublishProgress looks at the engines.
const ProgressInterval = 2 * time.Second

// PublishProgress keeps, for every volume this process is primary of,
// the replicas' states and resync progress in Consul (leader.ResyncRecord)
// for `saddlebag status`, until ctx ends: every interval it reads each
// running engine's status and writes the record when it changed. While a
// replica resyncs that is every interval; once all are in sync, nothing
// is written until something changes. Failures are logged at debug and
// retried at the next interval: the record informs, it decides nothing.
func PublishProgress(ctx context.Context, client *leader.Client, node string, interval time.Duration, log hclog.Logger) {
	log = log.Named("progress")
	written := map[*replication.Engine]leader.ResyncRecord{}
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		live := map[*replication.Engine]bool{}
		for _, e := range replication.RunningEngines() {
			if e.Fenced() {
				continue
			}
			live[e] = true
			rec := progressRecord(e.Status(), node)
			if last, ok := written[e]; ok && reflect.DeepEqual(last, rec) {
				continue
			}
			stamped := rec
			stamped.Updated = time.Now().UTC()
			err := client.PutResync(ctx, e.Volume(), stamped)
			switch {
			case errors.Is(err, leader.ErrNotFound):
				// No volume record (the volume was deleted under its
				// primary): tried again only when it changes.
			case err != nil:
				if ctx.Err() == nil {
					log.Debug("write resync progress", "volume_id", e.Volume(), "error", err)
				}
				continue
			}
			written[e] = rec
		}
		for e := range written {
			if !live[e] {
				delete(written, e)
			}
		}
	}
}

// progressRecord is the engine's status as a record (without its time),
// rounded so that it changes only when something an operator reads did.
func progressRecord(st replication.EngineStatus, node string) leader.ResyncRecord {
	rec := leader.ResyncRecord{Epoch: st.Epoch, Node: node}
	for _, r := range st.Replicas {
		p := leader.ReplicaProgress{Addr: r.Addr, State: string(r.State), Reason: r.Reason, MissingBytes: r.MissingBytes}
		if rs := r.Resync; rs != nil && !rs.Finished && r.State == replication.StateResyncing {
			p.Mode, p.TotalBytes, p.DoneBytes = rs.Mode, rs.TotalBytes, rs.DoneBytes
			p.Percent = math.Round(rs.Percent*10) / 10
			p.BytesPerSec = math.Round(rs.BytesPerSec)
			p.ETASeconds = math.Round(rs.ETASeconds)
		}
		rec.Replicas = append(rec.Replicas, p)
	}
	return rec
}
