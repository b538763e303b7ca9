package plugin

import (
	"context"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/shoenig/test/must"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
)

func mountCap(fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// CreateVolume sizes a volume by the spec checks' rule (volspec.Size),
// with the file system's minimum when a capability mounts it.
func TestVolumeSize(t *testing.T) {
	cases := []struct {
		name     string
		req, lim int64
		caps     []*csi.VolumeCapability
		fs       string
		want     int64
		code     codes.Code
		msg      string
	}{
		{"default", 0, 0, []*csi.VolumeCapability{mountCap("")}, "ext4", volspec.DefaultSize, codes.OK, ""},
		{"rounded up", 5000, 0, []*csi.VolumeCapability{blockCap()}, "ext4", 8192, codes.OK, ""},
		{"xfs minimum", 300 << 20, 0, []*csi.VolumeCapability{mountCap("xfs")}, "xfs", 300 << 20, codes.OK, ""},
		{"xfs too small", 100 << 20, 0, []*csi.VolumeCapability{mountCap("xfs")}, "xfs", 0, codes.OutOfRange,
			`xfs needs a volume of at least 300MiB, not 100MiB; raise capacity_min to "300MiB" or more`},
		{"xfs too small by its limit", 0, 200 << 20, []*csi.VolumeCapability{mountCap("")}, "xfs", 0, codes.OutOfRange,
			`raise capacity_max to "300MiB" or more`},
		{"one byte of ext4", 1, 0, []*csi.VolumeCapability{mountCap("ext4")}, "ext4", 0, codes.OutOfRange,
			"ext4 needs a volume of at least 8MiB, not 4KiB"},
		{"one byte, raw block", 1, 0, []*csi.VolumeCapability{blockCap()}, "ext4", 4096, codes.OK, ""},
		{"a mount among block capabilities", 1, 0, []*csi.VolumeCapability{blockCap(), mountCap("")}, "ext4", 0, codes.OutOfRange, "ext4 needs"},
		{"inverted", 20 << 20, 10 << 20, []*csi.VolumeCapability{blockCap()}, "ext4", 0, codes.InvalidArgument,
			"capacity_min (20MiB) is larger than capacity_max (10MiB)"},
		{"no whole block", 4097, 8000, []*csi.VolumeCapability{blockCap()}, "ext4", 0, codes.OutOfRange, "whole number of 4 KiB blocks"},
		{"negative", -1, 0, []*csi.VolumeCapability{blockCap()}, "ext4", 0, codes.InvalidArgument, "negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := volumeSize(&csi.CapacityRange{RequiredBytes: c.req, LimitBytes: c.lim}, mountedFS(c.fs, c.caps))
			must.Eq(t, c.code, status.Code(err), must.Sprintf("err = %v", err))
			if c.code == codes.OK {
				must.Eq(t, c.want, got)
				return
			}
			must.StrContains(t, err.Error(), c.msg)
		})
	}
}

// CreateVolume refuses a volume too small for its file system before it
// places or writes anything, as `saddlebag volume validate` does.
func TestCreateVolumeChecksFileSystemSize(t *testing.T) {
	dev := testcluster.Dev(t, testcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cc := devClient(t, dev.HTTPAddr)
	ctrl, err := NewController(ControllerConfig{Client: cc, Agent: runDevAgent(t, cc, "c1", leader.ControllerService)})
	must.NoError(t, err)
	lead, err := ctrl.cfg.Agent.AcquireLeadership(ctx, "")
	must.NoError(t, err)
	ctrl.mu.Lock()
	ctrl.lease = lead
	ctrl.mu.Unlock()

	for _, c := range []struct {
		name   string
		params map[string]string
		caps   []*csi.VolumeCapability
		req    int64
		msg    string
	}{
		{"xfs by parameter", map[string]string{"fs_type": "xfs"}, []*csi.VolumeCapability{mountCap("")}, 100 << 20, "xfs needs a volume of at least 300MiB"},
		{"xfs by capability", nil, []*csi.VolumeCapability{mountCap("xfs")}, 299 << 20, "xfs needs a volume of at least 300MiB, not 299MiB"},
		{"one byte of ext4", nil, []*csi.VolumeCapability{mountCap("")}, 1, "ext4 needs a volume of at least 8MiB"},
		{"replicas 02", map[string]string{"replicas": "02"}, []*csi.VolumeCapability{blockCap()}, 1 << 20, `in plain digits, like "2"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "small", Parameters: c.params,
				CapacityRange: &csi.CapacityRange{RequiredBytes: c.req}, VolumeCapabilities: c.caps})
			must.Error(t, err)
			must.StrContains(t, err.Error(), c.msg)
			_, _, gerr := cc.GetVolume(ctx, volumeIDFor("small"))
			must.ErrorIs(t, gerr, leader.ErrNotFound, must.Sprint("a refused create wrote a record"))
		})
	}
}

// TestResolveFSType: a CreateVolume's file system comes from volspec's one
// rule (the parameters and the mount capability must agree; ext4 when
// neither names one), and mount capabilities naming different file
// systems are refused with both names.
func TestResolveFSType(t *testing.T) {
	cases := []struct {
		name   string
		param  string
		caps   []*csi.VolumeCapability
		want   string
		errHas string
	}{
		{"default", "", []*csi.VolumeCapability{mountCap("")}, volspec.DefaultFSType, ""},
		{"block only", "", []*csi.VolumeCapability{blockCap()}, volspec.DefaultFSType, ""},
		{"parameter", "xfs", []*csi.VolumeCapability{mountCap("")}, "xfs", ""},
		{"capability", "", []*csi.VolumeCapability{mountCap("xfs")}, "xfs", ""},
		{"both agree", "xfs", []*csi.VolumeCapability{mountCap("xfs"), blockCap()}, "xfs", ""},
		{"parameter and capability differ", "ext4", []*csi.VolumeCapability{mountCap("xfs")}, "", "the fs_type parameter (ext4) and the mount fs_type (xfs) differ"},
		{"capabilities differ", "", []*csi.VolumeCapability{mountCap("ext4"), mountCap("xfs")}, "", "different file systems (ext4 and xfs)"},
		{"unsupported capability", "", []*csi.VolumeCapability{mountCap("zfs")}, "", "must be ext4 or xfs"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolveFSType(volspec.Params{FSType: tc.param}, tc.caps)
			if tc.errHas != "" {
				must.ErrorContains(t, err, tc.errHas)
				return
			}
			must.NoError(t, err)
			must.Eq(t, tc.want, got)
		})
	}
}
