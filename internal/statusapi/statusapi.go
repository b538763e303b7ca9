package statusapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/saddlebag/saddlebag/internal/units"
	"github.com/saddlebag/saddlebag/replication"
)

// Source supplies the status to serve.
type Source interface {
	Status() replication.EngineStatus
}

// Serve answers GET /v1/status on ln until ctx is done. With
// authorize (not nil), a request it refuses gets 403 and its error.
func Serve(ctx context.Context, ln net.Listener, src Source, authorize func(*http.Request) error, log hclog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		if authorize != nil {
			if err := authorize(r); err != nil {
				http.Error(w, err.Error(), http.StatusForbidden)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(src.Status()); err != nil {
			log.Debug("write status", "error", err)
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	})
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Fetch reads the status from a server at addr (host:port), over HTTPS
// with tlsCfg when it is not nil.
func Fetch(ctx context.Context, addr string, tlsCfg *tls.Config) (replication.EngineStatus, error) {
	var st replication.EngineStatus
	scheme, client := "http", http.DefaultClient
	if tlsCfg != nil {
		scheme = "https"
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}}
		defer client.CloseIdleConnections()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+"/v1/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return st, fmt.Errorf("status from %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return st, fmt.Errorf("status from %s: %s: %s", addr, resp.Status, strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("status from %s: %w", addr, err)
	}
	return st, nil
}

// Format renders a status for people.
func Format(w io.Writer, st replication.EngineStatus) {
	state := "serving"
	switch {
	case st.Fenced:
		state = "FENCED (a newer primary took over)"
	case st.Held:
		state = "holding I/O (lease unconfirmed)"
	case st.InSync < st.MinInSync:
		state = fmt.Sprintf("holding writes (in sync %d < min_in_sync %d)", st.InSync, st.MinInSync)
	}
	fmt.Fprintf(w, "volume %s  size %s  epoch %d  %s\n", st.Volume, units.FormatBytes(st.Size), st.Epoch, state)
	fmt.Fprintf(w, "in sync %d of %d (min %d), hot extents %d\n", st.InSync, len(st.Replicas), st.MinInSync, st.HotExtents)
	if st.Reconcile.Extents > 0 {
		fmt.Fprintf(w, "start-up reconciliation: %d hot extents, %s compared, %d blocks repaired\n",
			st.Reconcile.Extents, units.FormatBytes(st.Reconcile.ComparedBytes), st.Reconcile.RepairedBlocks)
	}
	for _, r := range st.Replicas {
		fmt.Fprintf(w, "  %-22s %-12s", r.Addr, r.State)
		if r.MissingBytes > 0 {
			fmt.Fprintf(w, " missing %s", units.FormatBytes(r.MissingBytes))
		}
		if rs := r.Resync; rs != nil && !rs.Finished {
			fmt.Fprintf(w, " resync %s %.1f%% (%s of %s, %.1f MiB/s, eta %s)", rs.Mode, rs.Percent,
				units.FormatBytes(rs.DoneBytes), units.FormatBytes(rs.TotalBytes), rs.BytesPerSec/(1<<20),
				(time.Duration(rs.ETASeconds) * time.Second).String())
		}
		if r.Reason != "" {
			fmt.Fprintf(w, " (%s)", r.Reason)
		}
		fmt.Fprintln(w)
	}
}
