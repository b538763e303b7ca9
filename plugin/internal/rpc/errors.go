package rpc

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin/mount"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/wire"
	"github.com/saddlebag/saddlebag/scheduler"
)

// Errf returns a gRPC status error.
func Errf(c codes.Code, format string, args ...any) error {
	return status.Errorf(c, format, args...)
}

// ToStatus turns an error from the layers below into a gRPC status error,
// branching on type only; what says what failed. An error that is
// already a status passes through. It is the one mapping of Saddlebag's
// typed errors to codes: the Controller and Node services and the
// interceptors of plugin's gRPC servers all use it.
func ToStatus(err error, what string) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var pe *volspec.ParamsError
	var se *scheduler.ShortfallError
	var fm *mount.FSTypeMismatchError
	c := codes.Internal
	switch {
	case errors.As(err, &pe):
		c = codes.InvalidArgument
	case errors.As(err, &se):
		c = codes.ResourceExhausted
	case errors.Is(err, context.DeadlineExceeded):
		c = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		c = codes.Canceled
	case errors.Is(err, leader.ErrNotFound):
		c = codes.NotFound
	case errors.Is(err, leader.ErrConflict):
		c = codes.Aborted
	case errors.Is(err, leader.ErrLeaseLost), errors.Is(err, leader.ErrLeaseReleased), errors.Is(err, leader.ErrNoSession):
		c = codes.Unavailable
	case errors.As(err, &fm), errors.Is(err, mount.ErrUnknownContent), errors.Is(err, mount.ErrNotStaged),
		errors.Is(err, mount.ErrPathBusy), errors.Is(err, mount.ErrTooSmall):
		c = codes.FailedPrecondition
	case errors.Is(err, mount.ErrUnsupportedFS):
		c = codes.InvalidArgument
	case errors.Is(err, replication.ErrNoReplicas), errors.Is(err, replication.ErrFenced):
		c = codes.Unavailable
	case errors.Is(err, wire.ErrReplicaBusy):
		c = codes.FailedPrecondition
	case errors.Is(err, replication.ErrNoSpace):
		c = codes.ResourceExhausted
	}
	return status.Error(c, fmt.Sprintf("%s: %v", what, err))
}
