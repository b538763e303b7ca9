package main

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/shoenig/test/must"

	"github.com/saddlebag/saddlebag/internal/testcluster"
)

var takeOverRE = regexp.MustCompile(`took over from a previous process under the same name`)

// A controller and a node SIGKILLed and restarted within a second under
// the same name: the new processes feed the very Consul checks the dead
// processes' sessions are tied to, so those sessions would never die.
// They take them over at start instead: the controller is active and
// serving, and the node restages its volume at a higher epoch, in well
// under the lock-delay (10s here), which the test prints as
// restart_takeover_seconds.
func TestRestartTakeover(t *testing.T) {
	requireRoot(t)
	dev := testcluster.Dev(t, testcluster.Options{})
	dir := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, dir) })
	recoverOnFailure(t, dir, filepath.Join(dir, "n1", "csi"), "rt")
	const lockDelay = 10 * time.Second
	sock := filepath.Join(dir, "n1.sock")
	dataDir, stateDir := filepath.Join(dir, "n1", "data"), filepath.Join(dir, "n1", "csi")
	nodeArgs := func(listen string) []string {
		return []string{"node", "--node", "n1", "--data-dir", dataDir, "--listen", listen, "--consul-addr", dev.HTTPAddr,
			"--ttl", "3s", "--lock-delay", lockDelay.String(), "--log-level", "debug", "--csi-endpoint", "unix://" + sock,
			"--csi-state-dir", stateDir, "--stage-timeout", "60s"}
	}
	startNode := func(listen string) (*proc, string) {
		p := startProc(t, nodeArgs(listen)...)
		addr := p.waitLine(t, replicaAddrRE, 10*time.Second)[1]
		p.waitLine(t, csiServingRE, 30*time.Second)
		return p, addr
	}
	ctlArgs := []string{"--ttl", "3s", "--lock-delay", lockDelay.String()}
	n1, addr := startNode("127.0.0.1:0")
	c1, ctlSock := startController(t, dev.HTTPAddr, "c1", dir, ctlArgs...)
	c1.waitLine(t, activeControlRE, 30*time.Second)
	c := consulClient(t, dev.HTTPAddr)
	waitHealthyNodes(t, c, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ctl := csi.NewControllerClient(dialCSI(t, ctlSock))
	_, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "rt", Parameters: map[string]string{"replicas": "1"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	must.NoError(t, err)
	_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "rt", NodeId: "n1", VolumeCapability: swCap})
	must.NoError(t, err)
	staging := filepath.Join(dir, "staging", "rt")
	_, err = csi.NewNodeClient(dialCSI(t, sock)).NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "rt", StagingTargetPath: staging,
		VolumeCapability: swCap})
	must.NoError(t, err)
	before, err := c.ReadPrimary(ctx, "rt")
	must.NoError(t, err)
	must.Eq(t, "n1", before.Node)
	lead, err := c.ReadLeader(ctx)
	must.NoError(t, err)

	// SIGKILL both and start them again at once, under the same names
	// (the node on the same replica address, which the record names).
	killed := time.Now()
	n1.kill()
	c1.kill()
	c2, _ := startController(t, dev.HTTPAddr, "c1", dir, ctlArgs...)
	n2, _ := startNode(addr)
	restarted := time.Since(killed)
	must.Less(t, time.Second+500*time.Millisecond, restarted, must.Sprint("the restart itself was too slow to test a takeover"))

	// The controller: active and serving a mutating call.
	c2.waitLine(t, takeOverRE, 20*time.Second)
	c2.waitLine(t, activeControlRE, 30*time.Second)
	ctl = csi.NewControllerClient(dialCSI(t, ctlSock))
	_, err = ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "rt2", Parameters: map[string]string{"replicas": "1"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	must.NoError(t, err)
	ctlReady := time.Since(killed)
	lead2, err := c.ReadLeader(ctx)
	must.NoError(t, err)
	must.Eq(t, "c1", lead2.Node)
	must.Greater(t, lead.Epoch, lead2.Epoch)

	// The node: its volume restaged at once, at a higher epoch.
	n2.waitLine(t, takeOverRE, 20*time.Second)
	free, err := c.ReadPrimary(ctx, "rt")
	must.NoError(t, err)
	must.Eq(t, "", free.Node, must.Sprint("the dead node's primary lock is still held: the volume could not move"))
	node := csi.NewNodeClient(dialCSI(t, sock))
	_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "rt", StagingTargetPath: staging, VolumeCapability: swCap})
	must.NoError(t, err)
	nodeReady := time.Since(killed)
	after, err := c.ReadPrimary(ctx, "rt")
	must.NoError(t, err)
	must.Eq(t, "n1", after.Node)
	must.Greater(t, before.Epoch, after.Epoch)
	must.NotEq(t, before.Session, after.Session)

	took := max(ctlReady, nodeReady)
	fmt.Printf("restart_takeover_seconds %.2f (controller active and serving %.2f, node restaged %.2f, restart %.2f; lock-delay %s)\n",
		took.Seconds(), ctlReady.Seconds(), nodeReady.Seconds(), restarted.Seconds(), lockDelay)
	t.Logf("restart_takeover_seconds %.2f", took.Seconds())
	must.Less(t, lockDelay, took, must.Sprint("the takeover waited for lock-delay"))

	_, err = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "rt", StagingTargetPath: staging})
	must.NoError(t, err)
	for _, id := range []string{"rt", "rt2"} {
		_, err = ctl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "n1"})
		must.NoError(t, err)
		_, err = ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		must.NoError(t, err)
	}
}
