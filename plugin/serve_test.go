package plugin

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	"github.com/shoenig/test/must"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The interceptor logs requests without their secrets (at any depth) and
// turns a plain error into Internal, never Unknown.
func TestLoggingInterceptorStripsSecrets(t *testing.T) {
	var buf bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Trace})
	icpt := LoggingInterceptor(log)
	req := &csi.CreateVolumeRequest{Name: "vol-a", Secrets: map[string]string{"password": "hunter2-secret"},
		Parameters: map[string]string{"replicas": "2"}}
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Controller/CreateVolume"}

	_, err := icpt(context.Background(), req, info, func(context.Context, any) (any, error) {
		return nil, errors.New("plain failure")
	})
	must.Eq(t, codes.Internal, status.Code(err))
	_, err = icpt(context.Background(), req, info, func(context.Context, any) (any, error) {
		return &csi.CreateVolumeResponse{}, nil
	})
	must.NoError(t, err)
	out := buf.String()
	must.StrContains(t, out, "vol-a")
	must.StrContains(t, out, "replicas")
	must.False(t, strings.Contains(out, "hunter2-secret"), must.Sprint(out))
	must.StrContains(t, out, "***stripped***")
	must.Eq(t, "hunter2-secret", req.Secrets["password"]) // the request itself is untouched
}

// Every field the CSI spec marks csi_secret is stripped, whatever its
// name, in every request that carries one; what is not secret stays.
func TestStripSecrets(t *testing.T) {
	const pass = "correct horse battery staple"
	for name, req := range map[string]any{
		"CreateVolume":     &csi.CreateVolumeRequest{Name: "v", Secrets: map[string]string{"encryption_passphrase": pass}},
		"DeleteVolume":     &csi.DeleteVolumeRequest{VolumeId: "v", Secrets: map[string]string{"x": pass}},
		"NodeStageVolume":  &csi.NodeStageVolumeRequest{VolumeId: "v", Secrets: map[string]string{"encryption_passphrase": pass}, VolumeContext: map[string]string{"fs_type": "ext4"}},
		"NodePublish":      &csi.NodePublishVolumeRequest{VolumeId: "v", Secrets: map[string]string{"encryption_passphrase": pass}},
		"ControllerExpand": &csi.ControllerExpandVolumeRequest{VolumeId: "v", Secrets: map[string]string{"k": pass}},
	} {
		t.Run(name, func(t *testing.T) {
			out := StripSecrets(req)
			must.StrNotContains(t, out, pass)
			must.StrContains(t, out, "***stripped***")
			must.StrContains(t, out, `"v"`)
		})
	}
	must.StrContains(t, StripSecrets(&csi.NodeStageVolumeRequest{VolumeContext: map[string]string{"fs_type": "ext4"}}), "ext4")
}

func TestSocketPath(t *testing.T) {
	for in, want := range map[string]string{
		"unix:///var/run/csi.sock": "/var/run/csi.sock",
		"unix:/var/run/csi.sock":   "/var/run/csi.sock",
		"/var/run/csi.sock":        "/var/run/csi.sock",
	} {
		got, err := SocketPath(in)
		must.NoError(t, err)
		must.Eq(t, want, got)
	}
	for _, bad := range []string{"", "tcp://127.0.0.1:1", "unix://relative.sock", "csi.sock"} {
		_, err := SocketPath(bad)
		must.Error(t, err, must.Sprint(bad))
	}
}
