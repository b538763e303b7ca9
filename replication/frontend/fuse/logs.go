package fuse

import (
	"bytes"
	"io"
	"log"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// go-fuse writes a few messages through the standard library's logger
// rather than MountOptions.Logger: a kernel protocol version it does not
// support, an error it cannot convert, and a read shorter than a request
// header. The last one, with nothing read, is EOF on a relayed
// connection's socket: the relay stops at every handover and unmount, and
// go-fuse's reader then ends. That is the relay's normal end; the rest
// deserve a warning.
var eofShortRead = []byte("Short read for input header: []")

// RouteStdLog sends the standard library's logger to lg at warn level,
// without the relay's EOF (see eofShortRead). A process serving FUSE
// calls it once, with its main logger.
func RouteStdLog(lg hclog.Logger) {
	log.SetFlags(0)
	log.SetOutput(dropLines{to: lg.StandardWriter(&hclog.StandardLoggerOptions{ForceLevel: hclog.Warn}), drop: eofShortRead})
}

// dropLines writes every line to to except those containing drop, while
// when (if not nil) is set.
type dropLines struct {
	to   io.Writer
	drop []byte
	when *atomic.Bool
}

func (d dropLines) Write(p []byte) (int, error) {
	if bytes.Contains(p, d.drop) && (d.when == nil || d.when.Load()) {
		return len(p), nil
	}
	return d.to.Write(p)
}

// relayLogger is the go-fuse logger of a relayed connection: go-fuse
// reports the EOF its reader gets once the relay stops as a failed read,
// which is the relay's normal end, not worth a warning.
func relayLogger(lg *log.Logger, stopping *atomic.Bool) *log.Logger {
	return log.New(dropLines{to: lg.Writer(), drop: []byte("Failed to read from fuse conn"), when: stopping}, lg.Prefix(), lg.Flags())
}
