package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin"
	"github.com/saddlebag/saddlebag/replication"
)

// A create interrupted by a controller crash (its record "creating", one
// replica made) is listed by ListVolumes as pending with the time it will
// be removed, and the active controller removes its replica and record
// once --create-timeout has passed; a ready volume is left alone.
func TestInterruptedCreateRemoved(t *testing.T) {
	requireRoot(t)
	dev := testcluster.Dev(t, testcluster.Options{})
	dir := t.TempDir()
	n1 := startCSINode(t, dev.HTTPAddr, "127.0.0.1", "n1", dir, false)
	c := consulClient(t, dev.HTTPAddr)
	waitHealthyNodes(t, c, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// What the crashed controller left.
	const size = 16 << 20
	_, err := replication.CreateReplica(ctx, secureDialer(t, dev.HTTPAddr, connecttls.ControllerService), n1.addr, "half", size, 5*time.Second)
	must.NoError(t, err)
	_, err = c.PutVolume(ctx, leader.VolumeRecord{ID: "half", Name: "half", State: leader.VolumeCreating,
		Spec:     leader.VolumeSpec{SizeBytes: size, Replicas: 2, FSType: "ext4"},
		Replicas: []leader.ReplicaRecord{{Node: "n1", Addr: n1.addr, State: leader.ReplicaReady}, {Node: "n2", Addr: "127.0.0.1:1", State: leader.ReplicaReady}}}, 0, nil)
	must.NoError(t, err)
	written := time.Now()
	replica := filepath.Join(n1.dataDir, "half")
	_, err = os.Stat(replica)
	must.NoError(t, err)

	p, sock := startController(t, dev.HTTPAddr, "c1", dir, "--create-timeout", "8s", "--replica-scan", "500ms", "--replica-timeout", "1s")
	p.waitLine(t, activeControlRE, 30*time.Second)
	ctl := csi.NewControllerClient(dialCSI(t, sock))
	_, err = ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "whole", Parameters: map[string]string{"replicas": "1"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	must.NoError(t, err)

	list, err := ctl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	must.NoError(t, err)
	must.Less(t, 8*time.Second, time.Since(written), must.Sprint("too slow to see the pending volume before its removal"))
	byID := map[string]*csi.Volume{}
	for _, e := range list.GetEntries() {
		byID[e.GetVolume().GetVolumeId()] = e.GetVolume()
	}
	must.MapLen(t, 2, byID)
	must.Eq(t, "creating", byID["half"].GetVolumeContext()[plugin.ContextState])
	at, err := time.Parse(time.RFC3339, byID["half"].GetVolumeContext()[plugin.ContextRemovedAt])
	must.NoError(t, err)
	must.True(t, at.After(written) && at.Before(written.Add(10*time.Second)), must.Sprintf("removed-at %s", at))
	must.MapNotContainsKey(t, byID["whole"].GetVolumeContext(), plugin.ContextState)

	// The replica on the unreachable node cannot be removed: the record
	// stays until it can. Point that replica at n1 too, as if its node
	// came back there; then both go.
	p.waitLine(t, regexpMust(`removing a volume whose create was interrupted`), 20*time.Second)
	_, _, err = c.GetVolume(ctx, "half")
	must.NoError(t, err)
	rec, index, err := c.GetVolume(ctx, "half")
	must.NoError(t, err)
	rec.Replicas = rec.Replicas[:1]
	rec.Updated = written // PutVolume sets it to now: the timeout starts again
	_, err = c.PutVolume(ctx, rec, index, nil)
	must.NoError(t, err)
	p.waitLine(t, regexpMust(`interrupted create removed.*volume_id=half`), 30*time.Second)
	_, _, err = c.GetVolume(ctx, "half")
	must.ErrorIs(t, err, leader.ErrNotFound)
	_, err = os.Stat(replica)
	must.True(t, errors.Is(err, os.ErrNotExist), must.Sprintf("replica left: %v", err))
	whole, _, err := c.GetVolume(ctx, "whole")
	must.NoError(t, err)
	must.Eq(t, leader.VolumeReady, whole.State)
	_, err = ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "whole"})
	must.NoError(t, err)
}
