package rpc

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"

	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// Every field of every request is untrusted: Nomad passes what operators
// and job authors wrote. Each RPC checks its identifiers (here) and paths
// (plugin/node's validate.go) before anything touches Consul, a file or a
// replica, and a field that fails is InvalidArgument with a message
// naming the field and the rule. A well-formed id that names nothing is
// then NotFound (or success, for the idempotent deletes), as CSI says.

// maxNameBytes is CSI's general size limit for a string field.
const maxNameBytes = 128

// CheckVolumeID checks a volume id: exactly the set CreateVolume issues
// (wire.ValidateVolumeID; plugin's volumeIDFor hashes any other
// name).
func CheckVolumeID(field, id string) error {
	if id == "" {
		return Errf(codes.InvalidArgument, "%s is required", field)
	}
	if err := wire.ValidateVolumeID(id); err != nil {
		return Errf(codes.InvalidArgument, "%s: %v", field, err)
	}
	return nil
}

// CheckNodeID checks a node id: exactly the set NodeGetInfo can report
// (leader.ValidateNodeName, enforced on --node at start).
func CheckNodeID(field, id string) error {
	if id == "" {
		return Errf(codes.InvalidArgument, "%s is required", field)
	}
	if err := leader.ValidateNodeName(id); err != nil {
		return Errf(codes.InvalidArgument, "%s: %v", field, err)
	}
	return nil
}

// CheckName checks CreateVolume's name: any text the CO chooses (it is
// hashed into the volume id when it is not an id itself), within CSI's
// 128-byte limit, valid UTF-8, and no control characters, since it is
// logged and stored.
func CheckName(name string) error {
	switch {
	case name == "":
		return Errf(codes.InvalidArgument, "name is required")
	case len(name) > maxNameBytes:
		return Errf(codes.InvalidArgument, "name is %d bytes; CSI limits it to %d", len(name), maxNameBytes)
	case !utf8.ValidString(name):
		return Errf(codes.InvalidArgument, "name is not valid UTF-8")
	case strings.ContainsFunc(name, unicode.IsControl):
		return Errf(codes.InvalidArgument, "name %q contains a control character", name)
	}
	return nil
}
