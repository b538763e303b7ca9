package plugin

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// PluginName is the CSI plugin name GetPluginInfo reports (domain name
// notation, as the CSI spec asks). Nomad's plugin_id is chosen in the
// job file and is independent of it.
const PluginName = "csi.saddlebag.io"

// Identity is the CSI Identity service of either process.
type Identity struct {
	csi.UnimplementedIdentityServer
	// Version is reported by GetPluginInfo.
	Version string
	// Ready reports whether the process can serve (it has a Consul session).
	Ready func() bool
}

var _ csi.IdentityServer = (*Identity)(nil)

// GetPluginInfo returns the plugin name and version.
func (i *Identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	v := i.Version
	if v == "" {
		v = "dev"
	}
	return &csi.GetPluginInfoResponse{Name: PluginName, VendorVersion: v}, nil
}

// GetPluginCapabilities reports VOLUME_ACCESSIBILITY_CONSTRAINTS (volumes
// are reachable from the nodes holding their replicas) and
// CONTROLLER_SERVICE: the plugin has one (`saddlebag controller`), and
// both processes say so, as the CO reads it from the node plugin too.
func (i *Identity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	svc := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	caps := []*csi.PluginCapability{svc(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
		svc(csi.PluginCapability_Service_CONTROLLER_SERVICE)}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe reports ready once the process holds a Consul session.
func (i *Identity) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	ready := i.Ready == nil || i.Ready()
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(ready)}, nil
}
