package rpc

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/internal/volkey"
	"github.com/saddlebag/saddlebag/leader"
)

// access modes a single-primary block device supports.
func supportedMode(m csi.VolumeCapability_AccessMode_Mode) bool {
	return m == csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER ||
		m == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
}

// CheckCapability validates one capability's shape (an error, which
// callers return as InvalidArgument, when malformed) and returns why it
// is unsupported ("" when supported).
func CheckCapability(c *csi.VolumeCapability) (string, error) {
	if c == nil {
		return "", fmt.Errorf("volume capability is nil")
	}
	if c.GetAccessMode() == nil {
		return "", fmt.Errorf("volume capability has no access mode")
	}
	if c.GetBlock() == nil && c.GetMount() == nil {
		return "", fmt.Errorf("volume capability has neither block nor mount access type")
	}
	mode := c.GetAccessMode().GetMode()
	if !supportedMode(mode) {
		return fmt.Sprintf("access mode %s is not supported: a volume has one primary node (use SINGLE_NODE_WRITER or SINGLE_NODE_READER_ONLY)", mode), nil
	}
	if m := c.GetMount(); m != nil && m.GetFsType() != "" && !slices.Contains(volspec.FSTypes, m.GetFsType()) {
		return fmt.Sprintf("fs_type %q is not supported (%s)", m.GetFsType(), strings.Join(volspec.FSTypes, " or ")), nil
	}
	return "", nil
}

// CapabilityFits says whether a valid, supported capability fits a volume
// ("" when it does).
func CapabilityFits(c *csi.VolumeCapability, rec leader.VolumeRecord) string {
	if m := c.GetMount(); m != nil && m.GetFsType() != "" && m.GetFsType() != rec.Spec.FSType {
		return fmt.Sprintf("volume %s holds %s, not %s", rec.ID, rec.Spec.FSType, m.GetFsType())
	}
	return ""
}

// CheckPassphrase refuses a request for an encrypted volume whose
// passphrase secret does not open the volume's key (a CreateVolume
// repeated with another passphrase would otherwise succeed and leave the
// operator believing the volume is sealed under the new one).
func CheckPassphrase(rec leader.VolumeRecord, secrets map[string]string) error {
	if rec.Encryption == nil {
		return nil
	}
	pass, ok := secrets[volspec.SecretPassphrase]
	if !ok {
		return Errf(codes.InvalidArgument, "volume %s is encrypted: the request needs the secret %s", rec.ID, volspec.SecretPassphrase)
	}
	key, err := rec.Encryption.Open(rec.ID, pass)
	clear(key)
	switch {
	case errors.Is(err, volkey.ErrWrongPassphrase):
		return Errf(codes.InvalidArgument, "volume %s: secrets.%s is wrong: it does not open the volume's data key; nothing was done",
			rec.ID, volspec.SecretPassphrase)
	case err != nil:
		return Errf(codes.Internal, "volume %s: its key record in Consul is unusable: %v", rec.ID, err)
	}
	return nil
}
