package clusterstatus

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
)

// barWidth is the progress bar's width in characters.
const barWidth = 20

// Bar renders percent (0-100) as a progress bar: [######--------------].
func Bar(percent float64) string {
	n := int(percent / 100 * barWidth)
	n = min(max(n, 0), barWidth)
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", barWidth-n) + "]"
}

// Format renders the status for people: the nodes, then each volume.
// withNodes is false for one volume's view.
func Format(w io.Writer, st Status, withNodes bool) {
	if withNodes {
		fmt.Fprintf(w, "nodes:")
		if len(st.Nodes) == 0 {
			fmt.Fprintf(w, " none registered")
		}
		for _, n := range st.Nodes {
			if n.Healthy {
				fmt.Fprintf(w, " %s (healthy, %s free)", n.Name, size(n.FreeBytes))
			} else {
				fmt.Fprintf(w, " %s (DOWN: %s)", n.Name, n.Why)
			}
		}
		fmt.Fprintln(w)
		if len(st.Volumes) == 0 {
			fmt.Fprintln(w, "no volumes")
		}
	}
	for i, v := range st.Volumes {
		if withNodes || i > 0 {
			fmt.Fprintln(w)
		}
		formatVolume(w, v)
	}
}

func formatVolume(w io.Writer, v Volume) {
	fmt.Fprintf(w, "volume %s  %s  %d replicas", v.ID, size(v.SizeBytes), v.Wanted)
	if v.FSType != "" {
		fmt.Fprintf(w, "  %s", v.FSType)
	}
	if v.Encrypted {
		fmt.Fprintf(w, "  encrypted")
	}
	if v.State != "" && v.State != "ready" {
		fmt.Fprintf(w, "  (%s)", v.State)
	}
	fmt.Fprintln(w)
	if v.Primary != "" {
		fmt.Fprintf(w, "  primary  %s, epoch %d\n", v.Primary, v.Epoch)
	} else {
		fmt.Fprintf(w, "  primary  none\n")
	}
	health := v.Health
	if v.HealthNote != "" {
		health += ": " + v.HealthNote
	}
	fmt.Fprintf(w, "  health   %s\n", health)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range v.Replicas {
		fmt.Fprintf(tw, "    %s\t%s\t%s", r.Node, r.Addr, r.State)
		var more []string
		if rs := r.Resync; rs != nil {
			more = append(more, fmt.Sprintf("%s %5.1f%%  %s of %s  %s/s  eta %s  (%s)", Bar(rs.Percent), rs.Percent,
				size(rs.DoneBytes), size(rs.TotalBytes), size(int64(rs.BytesPerSec)),
				eta(rs.ETASeconds, rs.BytesPerSec), rs.Mode))
		} else if r.MissingBytes > 0 {
			more = append(more, "lacks "+size(r.MissingBytes))
		}
		if r.Detail != "" {
			more = append(more, r.Detail)
		}
		if len(more) > 0 {
			fmt.Fprintf(tw, "\t%s", strings.Join(more, "; "))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	if v.ProgressAge > 0 && v.Primary != "" {
		fmt.Fprintf(w, "  (replica states from %s, %.0fs ago)\n", v.Primary, v.ProgressAge)
	}
}

func eta(seconds, rate float64) string {
	if rate <= 0 {
		return "unknown"
	}
	return (time.Duration(seconds) * time.Second).String()
}

// size is a byte count for people: 1.5 GiB, 32 MiB.
func size(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }
