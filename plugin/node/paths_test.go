package node

import (
	"testing"

	"github.com/shoenig/test/must"
)

// Nomad's default /local/csi paths become host paths under --host-csi-dir;
// a literal host stage_publish_base_dir passes through unchanged.
func TestPathMapperHost(t *testing.T) {
	t.Parallel()
	host := "/var/lib/nomad/client/csi/node/saddlebag"
	cases := []struct {
		name string
		m    PathMapper
		in   string
		want string
	}{
		{"default staging", PathMapper{HostDir: host}, "/local/csi/staging/db/rw-file-system-single-node-writer",
			host + "/staging/db/rw-file-system-single-node-writer"},
		{"default per-alloc", PathMapper{HostDir: host}, "/local/csi/per-alloc/a1/db/rw-file-system-single-node-writer",
			host + "/per-alloc/a1/db/rw-file-system-single-node-writer"},
		{"the mount itself", PathMapper{HostDir: host}, "/local/csi", host},
		{"literal host base dir", PathMapper{HostDir: host}, host + "/staging/db/x", host + "/staging/db/x"},
		{"custom plugin mount", PathMapper{HostDir: host, PluginMount: "/csi"}, "/csi/staging/db", host + "/staging/db"},
		{"prefix look-alike is not translated", PathMapper{HostDir: host}, "/local/csix/staging", "/local/csix/staging"},
		{"unrelated path", PathMapper{HostDir: host}, "/tmp/target", "/tmp/target"},
		{"no host dir: unchanged", PathMapper{}, "/local/csi/staging/db", "/local/csi/staging/db"},
		{"cleaned", PathMapper{HostDir: host + "/"}, "/local/csi//staging/../staging/db/", host + "/staging/db"},
		{"empty", PathMapper{HostDir: host}, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			must.Eq(t, tc.want, tc.m.Host(tc.in))
		})
	}
}
