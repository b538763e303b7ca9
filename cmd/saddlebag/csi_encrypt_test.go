package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/plugin/mount"
)

// An encrypted volume through real controller and node processes and a
// real Consul (issue 11, at rest):
//
//   - CreateVolume refuses encrypted = true without the passphrase secret,
//     and a repeated create with another passphrase;
//   - NodeStageVolume refuses a missing or wrong passphrase with
//     InvalidArgument naming the secret, and a wrong one on a second node
//     takes no lease: the running primary keeps its epoch and serves;
//   - the replicas' data files hold none of a known plaintext written
//     through the mounted file system (while a plain volume's control
//     copy does), before and after a failover and a resync;
//   - after the primary's node is SIGKILLed, the other node stages the
//     volume with the right passphrase and reads the file back intact;
//     the restarted node's replica is resynced (ciphertext) to a byte
//     copy of the primary's;
//   - no log line of any process, no Consul key or value and no error
//     returned contains the passphrases or the data key in any common
//     encoding.
func TestCSIEncryptedVolume(t *testing.T) {
	requireRoot(t)
	dev := testcluster.Dev(t, testcluster.Options{})
	dir := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, dir) })
	recoverOnFailure(t, dir, filepath.Join(dir, "n1", "csi"), "enc", "plain")
	recoverOnFailure(t, dir, filepath.Join(dir, "n2", "csi"), "enc")

	const pass = "enc-test passphrase 7d1c"
	const wrong = "enc-test wrong passphrase 93ab"
	marker := make([]byte, 12)
	_, err := rand.Read(marker)
	must.NoError(t, err)
	markerText := []byte("SADDLEBAG-PLAINTEXT-" + hex.EncodeToString(marker) + "|")
	content := bytes.Repeat(markerText, (1<<20)/len(markerText))

	c1, ctlSock := startController(t, dev.HTTPAddr, "c1", dir)
	c1.waitLine(t, activeControlRE, 30*time.Second)
	n1 := startCSINode(t, dev.HTTPAddr, "127.0.0.1", "n1", dir, true)
	n2 := startCSINode(t, dev.HTTPAddr, "127.0.0.1", "n2", dir, true)
	c := consulClient(t, dev.HTTPAddr)
	waitHealthyNodes(t, c, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ctl := csi.NewControllerClient(dialCSI(t, ctlSock))
	node1 := csi.NewNodeClient(dialCSI(t, n1.sock))
	node2 := csi.NewNodeClient(dialCSI(t, n2.sock))
	var errs []string // every error returned, checked for secrets at the end
	code := func(want codes.Code, err error) string {
		t.Helper()
		st := mustCode(t, want, err)
		errs = append(errs, st.Message())
		return st.Message()
	}

	create := func(name string, params, secrets map[string]string) (*csi.CreateVolumeResponse, error) {
		return ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, Parameters: params, Secrets: secrets,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	}
	encParams := map[string]string{"replicas": "2", "encrypted": "true"}
	msg := code(codes.InvalidArgument, second(create("enc", encParams, nil)))
	must.StrContains(t, msg, "encryption_passphrase")
	msg = code(codes.InvalidArgument, second(create("enc", encParams, map[string]string{"encryption_passphrase": "short"})))
	must.StrContains(t, msg, "at least 8 bytes")
	msg = code(codes.InvalidArgument, second(create("enc", map[string]string{"replicas": "2"}, map[string]string{"encryption_passphrase": pass})))
	must.StrContains(t, msg, "encrypted is not true")
	_, err = create("enc", encParams, map[string]string{"encryption_passphrase": pass})
	must.NoError(t, err)
	msg = code(codes.InvalidArgument, second(create("enc", encParams, map[string]string{"encryption_passphrase": wrong})))
	must.StrContains(t, msg, "is wrong")
	_, err = create("enc", encParams, map[string]string{"encryption_passphrase": pass}) // idempotent
	must.NoError(t, err)
	_, err = create("plain", map[string]string{"replicas": "2"}, nil)
	must.NoError(t, err)

	rec, _, err := c.GetVolume(ctx, "enc")
	must.NoError(t, err)
	must.NotNil(t, rec.Encryption)
	must.Eq(t, "true", rec.Spec.Parameters["encrypted"])
	must.Len(t, 2, rec.Replicas)
	dataKey, err := rec.Encryption.Open("enc", pass)
	must.NoError(t, err)
	plainRec, _, err := c.GetVolume(ctx, "plain")
	must.NoError(t, err)
	must.Nil(t, plainRec.Encryption)

	// Stage on n1: a missing and a wrong passphrase are refused and take
	// no lease; the right one stages.
	for _, id := range []string{"enc", "plain"} {
		_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "n1", VolumeCapability: swCap})
		must.NoError(t, err)
	}
	staging1 := filepath.Join(dir, "staging1", "enc")
	stage := func(n csi.NodeClient, id, staging string, secrets map[string]string) error {
		_, err := n.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
			VolumeCapability: swCap, Secrets: secrets})
		return err
	}
	msg = code(codes.InvalidArgument, stage(node1, "enc", staging1, nil))
	must.StrContains(t, msg, "needs the secret encryption_passphrase")
	msg = code(codes.InvalidArgument, stage(node1, "enc", staging1, map[string]string{"encryption_passphrase": wrong}))
	must.StrContains(t, msg, "secrets.encryption_passphrase is wrong")
	holder, err := c.ReadPrimary(ctx, "enc")
	must.NoError(t, err)
	must.Eq(t, "", holder.Node, must.Sprint("a refused stage took the primary lease"))
	must.NoError(t, stage(node1, "enc", staging1, map[string]string{"encryption_passphrase": pass}))
	unstageOnFailure(t, node1, "enc", staging1)
	// Staged already: the same call succeeds, a wrong passphrase does not.
	must.NoError(t, stage(node1, "enc", staging1, map[string]string{"encryption_passphrase": pass}))
	code(codes.InvalidArgument, stage(node1, "enc", staging1, map[string]string{"encryption_passphrase": wrong}))
	stagingPlain := filepath.Join(dir, "staging1", "plain")
	must.NoError(t, stage(node1, "plain", stagingPlain, nil))
	unstageOnFailure(t, node1, "plain", stagingPlain)

	writeSynced := func(path string, data []byte) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		must.NoError(t, err)
		_, err = f.Write(data)
		must.NoError(t, err)
		must.NoError(t, f.Sync())
		must.NoError(t, f.Close())
		d, err := os.Open(filepath.Dir(path))
		must.NoError(t, err)
		must.NoError(t, d.Sync())
		d.Close()
	}
	writeSynced(filepath.Join(staging1, "secret.txt"), content)
	writeSynced(filepath.Join(stagingPlain, "secret.txt"), content)
	syncFS(t, staging1)

	dataFile := func(n *csiNode, id string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(n.dataDir, id, "data"))
		must.NoError(t, err)
		return b
	}
	noPlaintext := func(when string, nodes ...*csiNode) {
		t.Helper()
		for _, n := range nodes {
			b := dataFile(n, "enc")
			must.True(t, len(bytes.TrimRight(b, "\x00")) > 1<<20, must.Sprintf("%s: replica on %s holds no data", when, n.name))
			must.False(t, bytes.Contains(b, markerText[:24]), must.Sprintf("%s: replica on %s holds plaintext", when, n.name))
		}
	}
	noPlaintext("after writing", n1, n2)
	// The control: the same bytes on the plain volume are there in clear,
	// so the search above can find what it looks for.
	for _, n := range []*csiNode{n1, n2} {
		must.True(t, bytes.Contains(dataFile(n, "plain"), markerText[:24]), must.Sprintf("plain replica on %s lacks the marker", n.name))
	}
	_, err = node1.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "plain", StagingTargetPath: stagingPlain})
	must.NoError(t, err)

	// A wrong passphrase on n2 while n1 serves: refused at once, no lease
	// taken, n1 keeps its epoch and goes on writing.
	before, err := c.ReadPrimary(ctx, "enc")
	must.NoError(t, err)
	must.Eq(t, "n1", before.Node)
	staging2 := filepath.Join(dir, "staging2", "enc")
	code(codes.InvalidArgument, stage(node2, "enc", staging2, map[string]string{"encryption_passphrase": wrong}))
	after, err := c.ReadPrimary(ctx, "enc")
	must.NoError(t, err)
	must.Eq(t, before, after)
	writeSynced(filepath.Join(staging1, "more.txt"), content[:64<<10])

	// Failover: n1 is SIGKILLed; n2 stages with the right passphrase and
	// reads the file back.
	n1.kill()
	if _, err := mount.Recover(ctx, mount.RecoverRequest{FUSEDir: filepath.Join(dir, "n1", "csi", "fuse", "enc"),
		BackingFile: filepath.Join(dir, "n1", "csi", "fuse", "enc", "enc"), Force: true}); err != nil {
		t.Fatalf("clear the killed node's mounts: %v", err)
	}
	_, err = ctl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: "enc", NodeId: "n1"})
	must.NoError(t, err)
	_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "enc", NodeId: "n2", VolumeCapability: swCap})
	must.NoError(t, err)
	code(codes.InvalidArgument, stage(node2, "enc", staging2, map[string]string{"encryption_passphrase": wrong}))
	must.NoError(t, stage(node2, "enc", staging2, map[string]string{"encryption_passphrase": pass}))
	unstageOnFailure(t, node2, "enc", staging2)
	got, err := os.ReadFile(filepath.Join(staging2, "secret.txt"))
	must.NoError(t, err)
	must.True(t, bytes.Equal(content, got), must.Sprint("the file read back after failover differs"))
	got, err = os.ReadFile(filepath.Join(staging2, "more.txt"))
	must.NoError(t, err)
	must.True(t, bytes.Equal(content[:64<<10], got))
	primary, err := c.ReadPrimary(ctx, "enc")
	must.NoError(t, err)
	must.Eq(t, "n2", primary.Node)
	must.Greater(t, before.Epoch, primary.Epoch)

	// n1 comes back on its address: its replica is resynced (it missed
	// the writes below) and then a byte copy of n2's, all ciphertext.
	writeSynced(filepath.Join(staging2, "after-failover.txt"), content[:256<<10])
	n1b := startProc(t, "node", "--node", "n1", "--data-dir", n1.dataDir, "--listen", n1.addr,
		"--consul-addr", dev.HTTPAddr, "--ttl", "1500ms", "--lock-delay", "1s", "--log-level", "debug",
		"--csi-endpoint", "unix://"+n1.sock, "--csi-state-dir", filepath.Join(dir, "n1", "csi"), "--max-volumes", "8")
	n1b.waitLine(t, csiServingRE, 30*time.Second)
	waitForCond(t, 90*time.Second, "n1's replica back in sync", func() bool {
		r, err := c.RecordedInSync(ctx, "enc")
		return err == nil && r != nil && len(r.Replicas) == 2
	})
	writeSynced(filepath.Join(staging2, "after-resync.txt"), content[:128<<10])
	noPlaintext("after failover and resync", n1, n2)
	syncFS(t, staging2)
	_, err = node2.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "enc", StagingTargetPath: staging2})
	must.NoError(t, err)
	must.True(t, bytes.Equal(dataFile(n1, "enc"), dataFile(n2, "enc")), must.Sprint("replicas differ after resync and a clean unstage"))
	noPlaintext("after unstage", n1, n2)

	// Nothing secret anywhere: logs of every process, Consul's KV, errors.
	kv := dumpKV(t, dev.HTTPAddr)
	must.StrContains(t, kv, "sealed_key") // the dump holds the record
	var logs strings.Builder
	for _, p := range []*proc{c1, n1.proc, n2.proc, n1b} {
		logs.WriteString(p.output())
	}
	must.StrContains(t, logs.String(), "NodeStageVolume") // the logs hold the calls
	haystacks := map[string]string{"logs": logs.String(), "consul kv": kv, "errors": strings.Join(errs, "\n")}
	for where, text := range haystacks {
		for _, secret := range secretForms(dataKey, pass, wrong) {
			if strings.Contains(text, secret) {
				t.Errorf("%s contain a secret (%d bytes)", where, len(secret))
			}
		}
	}

	for _, id := range []string{"enc", "plain"} {
		for _, n := range []string{"n1", "n2"} {
			_, err = ctl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: n})
			must.NoError(t, err)
		}
		_, err = ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		must.NoError(t, err)
	}
}

// unstageOnFailure unstages a volume through its node when the test has
// failed, before the processes are stopped: a node stopped with a volume
// staged may be killed in the middle of syncing a file system its own
// FUSE server backs, and then neither exits nor answers.
func unstageOnFailure(t *testing.T, n csi.NodeClient, id, staging string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if _, err := n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Logf("unstage %s after the failure: %v", id, err)
		}
	})
}

func second[T any](_ T, err error) error { return err }

// syncFS syncs the file system mounted at path.
func syncFS(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	must.NoError(t, err)
	defer f.Close()
	must.NoError(t, unix.Syncfs(int(f.Fd())))
}

// output is every line the process wrote to stderr so far.
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n") + "\n"
}

// dumpKV returns every key and value in Consul, one per line.
func dumpKV(t *testing.T, addr string) string {
	t.Helper()
	client, err := api.NewClient(&api.Config{Address: addr})
	must.NoError(t, err)
	pairs, _, err := client.KV().List("", nil)
	must.NoError(t, err)
	var b strings.Builder
	for _, p := range pairs {
		fmt.Fprintf(&b, "%s = %s\n", p.Key, p.Value)
	}
	return b.String()
}

// secretForms lists a data key and passphrases as text could carry them.
func secretForms(key []byte, passphrases ...string) []string {
	out := []string{string(key), hex.EncodeToString(key), strings.ToUpper(hex.EncodeToString(key)),
		base64.StdEncoding.EncodeToString(key), base64.RawStdEncoding.EncodeToString(key),
		base64.URLEncoding.EncodeToString(key), base64.RawURLEncoding.EncodeToString(key),
		fmt.Sprint(key), fmt.Sprintf("%x", key[:16])}
	for _, p := range passphrases {
		out = append(out, p, base64.StdEncoding.EncodeToString([]byte(p)), hex.EncodeToString([]byte(p)))
	}
	return slices.DeleteFunc(out, func(s string) bool { return s == "" })
}

// Passphrase rotation with `saddlebag volume passphrase`: a new
// passphrase is added (both stage the volume), the old one removed (it no
// longer stages, the new one does), the last one is never removed, and
// the command prints neither.
func TestVolumePassphraseRotation(t *testing.T) {
	requireRoot(t)
	dev := testcluster.Dev(t, testcluster.Options{})
	dir := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, dir) })
	recoverOnFailure(t, dir, filepath.Join(dir, "n1", "csi"), "rot")
	const oldPass, newPass = "the old passphrase 51f0", "the new passphrase c3a9"

	c1, ctlSock := startController(t, dev.HTTPAddr, "c1", dir)
	c1.waitLine(t, activeControlRE, 30*time.Second)
	n1 := startCSINode(t, dev.HTTPAddr, "127.0.0.1", "n1", dir, true)
	c := consulClient(t, dev.HTTPAddr)
	waitHealthyNodes(t, c, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ctl := csi.NewControllerClient(dialCSI(t, ctlSock))
	node := csi.NewNodeClient(dialCSI(t, n1.sock))
	_, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "rot", Parameters: map[string]string{"replicas": "1", "encrypted": "true"},
		Secrets: map[string]string{"encryption_passphrase": oldPass}, CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{swCap}})
	must.NoError(t, err)
	_, err = ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "rot", NodeId: "n1", VolumeCapability: swCap})
	must.NoError(t, err)
	staging := filepath.Join(dir, "staging", "rot")
	stageWith := func(pass string) error {
		_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "rot", StagingTargetPath: staging,
			VolumeCapability: swCap, Secrets: map[string]string{"encryption_passphrase": pass}})
		if err == nil {
			unstageOnFailure(t, node, "rot", staging)
		}
		return err
	}
	unstage := func() {
		t.Helper()
		_, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "rot", StagingTargetPath: staging})
		must.NoError(t, err)
	}
	must.NoError(t, stageWith(oldPass))
	must.NoError(t, os.WriteFile(filepath.Join(staging, "kept.txt"), []byte("kept across rotation"), 0o600))
	unstage()

	passphrase := func(stdin string, args ...string) (string, string, int) {
		return runSaddlebag(t, stdin, append([]string{"volume", "passphrase"}, append(args, "--consul-addr", dev.HTTPAddr)...)...)
	}
	// The last passphrase is never removed; a wrong one changes nothing.
	_, stderr, code := passphrase(oldPass+"\n", "remove", "rot")
	must.Eq(t, 1, code)
	must.StrContains(t, stderr, "only passphrase")
	_, stderr, code = passphrase("not it at all\n"+newPass+"\n", "add", "rot")
	must.Eq(t, 1, code)
	must.StrContains(t, stderr, "does not open")
	stdout, stderr, code := passphrase(oldPass+"\n"+newPass+"\n", "add", "rot")
	must.Eq(t, 0, code, must.Sprintf("stderr: %s", stderr))
	must.StrContains(t, stdout, "passphrase added (2 in use)")
	for _, out := range []string{stdout, stderr} {
		must.StrNotContains(t, out, oldPass)
		must.StrNotContains(t, out, newPass)
	}
	// Both open it now.
	must.NoError(t, stageWith(newPass))
	got, err := os.ReadFile(filepath.Join(staging, "kept.txt"))
	must.NoError(t, err)
	must.Eq(t, "kept across rotation", string(got))
	unstage()
	must.NoError(t, stageWith(oldPass))
	unstage()

	stdout, stderr, code = passphrase(oldPass+"\n", "remove", "rot")
	must.Eq(t, 0, code, must.Sprintf("stderr: %s", stderr))
	must.StrContains(t, stdout, "passphrase removed (1 in use)")
	st := mustCode(t, codes.InvalidArgument, stageWith(oldPass))
	must.StrContains(t, st.Message(), "is wrong")
	must.NoError(t, stageWith(newPass))
	got, err = os.ReadFile(filepath.Join(staging, "kept.txt"))
	must.NoError(t, err)
	must.Eq(t, "kept across rotation", string(got))
	unstage()

	_, err = ctl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: "rot", NodeId: "n1"})
	must.NoError(t, err)
	_, err = ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "rot"})
	must.NoError(t, err)
}
