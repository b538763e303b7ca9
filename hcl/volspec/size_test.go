package volspec

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/shoenig/test/must"
)

// Size is the one rule for a volume's size: the spec checks and the
// plugin's CreateVolume both call it.
func TestSize(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		lo, hi  int64
		fs      string
		want    int64
		problem SizeProblem
		field   string
		msg     string
	}{
		{"no range: the default", 0, 0, "ext4", DefaultSize, 0, "", ""},
		{"no range, xfs: the default fits", 0, 0, "xfs", DefaultSize, 0, "", ""},
		{"min rounded up to 4 KiB", 10e9, 0, "ext4", 10000003072, 0, "", ""},
		{"exact", 20 << 30, 20 << 30, "xfs", 20 << 30, 0, "", ""},
		{"max below the default", 0, 100<<20 + 5, "ext4", 100 << 20, 0, "", ""},
		{"raw block volume of one block", 1, 0, "", BlockSize, 0, "", ""},
		{"ext4 at its minimum", MinExt4Bytes, 0, "ext4", MinExt4Bytes, 0, "", ""},
		{"xfs at its minimum", MinXFSBytes, 0, "xfs", MinXFSBytes, 0, "", ""},
		{"inverted", 30 << 30, 20 << 30, "ext4", 0, RangeInverted, "capacity_min", "capacity_min (30GiB) is larger than capacity_max (20GiB)"},
		{"no whole block", 4097, 8000, "", 0, NoWholeBlocks, "capacity_max", "allow at least 8192 bytes (8KiB)"},
		{"max under a block", 0, 100, "", 0, NoWholeBlocks, "capacity_max", "whole number of 4 KiB blocks"},
		{"one byte is too small for ext4", 1, 0, "ext4", 0, TooSmallForFS, "capacity_min", `ext4 needs a volume of at least 8MiB, not 4KiB; raise capacity_min to "8MiB" or more`},
		{"xfs under 300 MiB", 100 << 20, 1 << 30, "xfs", 0, TooSmallForFS, "capacity_min", `xfs needs a volume of at least 300MiB, not 100MiB; raise capacity_min to "300MiB" or more, or use ext4`},
		{"xfs with only a small max", 0, 200 << 20, "xfs", 0, TooSmallForFS, "capacity_max", `raise capacity_max to "300MiB" or more`},
		{"xfs one block short", MinXFSBytes - BlockSize, 0, "xfs", 0, TooSmallForFS, "capacity_min", "xfs needs a volume of at least 300MiB"},
		{"overflow", math.MaxInt64 - 1, 0, "", 0, NoWholeBlocks, "capacity_min", "too large"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, err := Size(c.lo, c.hi, c.fs)
			if c.problem == 0 {
				must.NoError(t, err)
				must.Eq(t, c.want, got)
				must.Eq(t, int64(0), got%BlockSize)
				return
			}
			var se *SizeError
			must.True(t, errors.As(err, &se), must.Sprintf("err = %v", err))
			must.Eq(t, c.problem, se.Problem)
			must.Eq(t, c.field, se.Field)
			must.StrContains(t, se.Error(), c.msg)
		})
	}
}

// FitsFS is the file-system half of Size, for a size already chosen.
func TestFitsFS(t *testing.T) {
	t.Parallel()
	must.NoError(t, FitsFS("xfs", 512<<20))
	must.NoError(t, FitsFS("ext4", 8<<20))
	must.NoError(t, FitsFS("", BlockSize))
	err := FitsFS("xfs", 256<<20)
	var se *SizeError
	must.True(t, errors.As(err, &se))
	must.Eq(t, TooSmallForFS, se.Problem)
	must.Eq(t, "xfs needs a volume of at least 300MiB, not 256MiB; make the volume 300MiB or larger, or use ext4 (which needs 8MiB)", err.Error())
	must.ErrorContains(t, FitsFS("ext4", 4<<20), "ext4 needs a volume of at least 8MiB, not 4MiB")
}

// The spec checks report Size's problems at the bound to change, with a
// file system only when a capability mounts one.
func TestSpecSizeChecks(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		capacity  string // replaces the capacity lines of valid
		block     bool   // every capability a raw block device
		fs        string
		line, col int
		want      string // substring of the one error; "" for valid, then wantSize
		wantSize  int64
	}{
		{"one byte", `capacity_min = "1"`, false, "ext4", 6, 16, "ext4 needs a volume of at least 8MiB, not 4KiB", 0},
		{"one byte, raw block", `capacity_min = "1"`, true, "ext4", 0, 0, "", BlockSize},
		{"10G is Nomad's 10×10^9", `capacity_min = "10G"`, false, "ext4", 0, 0, "", 10000003072},
		{"xfs default size", ``, false, "xfs", 0, 0, "", DefaultSize},
		{"xfs small max", `capacity_max = "200MiB"`, false, "xfs", 6, 16, "xfs needs a volume of at least 300MiB, not 200MiB", 0},
		{"xfs small max, raw block", `capacity_max = "200MiB"`, true, "xfs", 0, 0, "", 200 << 20},
		{"too large", `capacity_min = "9PiB"`, false, "ext4", 6, 16, `capacity_min "9PiB" is too large`, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			src := strings.Replace(valid, "capacity_min = \"10GiB\"\ncapacity_max = \"20GiB\"", c.capacity, 1)
			src = strings.Replace(src, `fs_type  = "ext4"`, `fs_type  = "`+c.fs+`"`, 1)
			if c.block {
				src = strings.Replace(src, `"file-system"`, `"block-device"`, 1)
			}
			s, diags := Parse("v.hcl", []byte(src))
			if c.want == "" {
				must.False(t, diags.HasErrors(), must.Sprintf("%v", diags))
				must.Eq(t, c.wantSize, s.Size)
				return
			}
			must.Nil(t, s)
			must.Len(t, 1, diags.Errs(), must.Sprintf("%v", diags))
			d := diags.Errs()[0].Error()
			must.StrContains(t, d, c.want)
			for _, x := range diags {
				if x.Severity == hcl.DiagError {
					must.Eq(t, c.line, x.Subject.Start.Line)
					must.Eq(t, c.col, x.Subject.Start.Column)
				}
			}
		})
	}
}
