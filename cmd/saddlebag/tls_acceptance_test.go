package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/consul/api"
	"github.com/shoenig/test/must"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/internal/connecttls"
	"github.com/saddlebag/saddlebag/internal/testcluster"
	"github.com/saddlebag/saddlebag/replication"
	"github.com/saddlebag/saddlebag/replication/replica"
	"github.com/saddlebag/saddlebag/replication/wire"
)

// securedVolume is a 2-replica volume served through the CSI path by
// real `saddlebag node` processes, both secure against one dev Consul
// with the default intentions installed by `saddlebag setup-intentions`:
// a controller created it with a replica on n1 (a1) and one on n2 (a2),
// n1's CSI node plugin staged it (n1 is its primary) and published it as
// a block device, and a writer keeps writes going to that device.
type securedVolume struct {
	dev          *testcluster.Agent
	api          *api.Client
	n1, n2       *proc
	n2Args       []string
	a1, a2       string
	d1, d2       string // data directories
	vol          *csiVolume
	stop         atomic.Bool
	writerDone   chan struct{}
	mu           sync.Mutex
	acked        int
	writerFailed string
}

const (
	securedVolumeName = "vol"
	securedVolumeSize = 16 << 20
	// The writer writes the first half of the volume only; attackers aim
	// at the second half, which must stay zero.
	attackOffset = securedVolumeSize - 64<<10
	// writersInFlight is how many writes the writer keeps going at once.
	writersInFlight = 4
)

func startSecuredVolume(t *testing.T) *securedVolume {
	t.Helper()
	requireRoot(t)
	v := &securedVolume{dev: testcluster.Dev(t, testcluster.Options{})}
	var err error
	v.api, err = api.NewClient(&api.Config{Address: v.dev.HTTPAddr})
	must.NoError(t, err)
	out, err := exec.Command(saddlebagBin, "setup-intentions", "--consul-addr", v.dev.HTTPAddr).CombinedOutput()
	must.NoError(t, err, must.Sprint(string(out)))
	must.StrContains(t, string(out), "intention * -> saddlebag-node: deny")
	must.StrContains(t, string(out), "intention saddlebag-controller -> saddlebag-node: allow")

	work := t.TempDir()
	t.Cleanup(func() { assertNothingMountedUnder(t, work) })
	recoverOnFailure(t, work, filepath.Join(work, "n1-csi"), securedVolumeName)
	v.a1 = "127.0.0.1:" + strconv.Itoa(freePort(t))
	v.a2 = "127.0.0.1:" + strconv.Itoa(freePort(t))
	v.d1, v.d2 = filepath.Join(work, "n1"), filepath.Join(work, "n2")
	nodeArgs := func(name, dataDir, listen string, extra ...string) []string {
		return append([]string{"node", "--node", name, "--data-dir", dataDir, "--listen", listen, "--consul-addr", v.dev.HTTPAddr,
			"--ttl", "1500ms", "--lock-delay", "1s", "--metrics-addr", ""}, extra...)
	}
	v.n2Args = nodeArgs("n2", v.d2, v.a2)
	v.n2 = startProc(t, v.n2Args...)
	v.n2.waitLine(t, nodeSessionRE, 60*time.Second)
	n1Sock := filepath.Join(work, "n1.sock")
	v.n1 = startProc(t, nodeArgs("n1", v.d1, v.a1, "--csi-endpoint", "unix://"+n1Sock, "--csi-state-dir", filepath.Join(work, "n1-csi"),
		"--stage-timeout", "30s")...)
	v.n1.waitLine(t, nodeSessionRE, 60*time.Second)
	v.n1.waitLine(t, csiServingRE, 10*time.Second)
	_, ctlSock := startController(t, v.dev.HTTPAddr, "c1", work)
	waitHealthyNodes(t, consulClient(t, v.dev.HTTPAddr), 2)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v.vol = serveBlockVolume(t, ctx, ctlSock, n1Sock, "n1", work, securedVolumeName, securedVolumeSize, 2)
	v.vol.publish(t, ctx)
	v.n1.waitLine(t, regexpMust(`serving as primary.*volume_id=`+securedVolumeName), 10*time.Second)
	for _, d := range []string{v.d1, v.d2} {
		_, err := replica.ReadMeta(d, securedVolumeName)
		must.NoError(t, err, must.Sprintf("the volume's replica in %s", d))
	}
	v.startWriter(t)
	t.Cleanup(func() { v.stopWriter() }) // before the volume's unpublish
	v.waitAcked(t, 200)
	return v
}

// startWriter keeps writersInFlight writes going to distinct random
// 4 KiB blocks of the first half of the published device, each opened
// O_DIRECT|O_DSYNC so that an acknowledged write went through the loop
// device, FUSE and the engine to the replicas. Each acknowledged write
// counts; the first failure stops it.
func (v *securedVolume) startWriter(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(v.vol.target, os.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC, 0)
	must.NoError(t, err)
	v.writerDone = make(chan struct{})
	var wg sync.WaitGroup
	const nblk = securedVolumeSize / 4096 / 2
	for w := range writersInFlight {
		// O_DIRECT wants a page-aligned buffer: an anonymous mapping is one.
		buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		must.NoError(t, err)
		rnd := rand.New(rand.NewPCG(11, uint64(w)))
		wg.Go(func() {
			defer unix.Munmap(buf)
			for seq := uint64(1); !v.stop.Load(); seq++ {
				// Worker w writes the blocks ≡ w (mod writersInFlight): no
				// two writes in flight overlap.
				blk := uint64(rnd.IntN(nblk/writersInFlight)*writersInFlight + w)
				for i := 0; i < len(buf); i += 16 {
					binary.LittleEndian.PutUint64(buf[i:], seq)
					binary.LittleEndian.PutUint64(buf[i+8:], blk)
				}
				if _, err := f.WriteAt(buf, int64(blk)*4096); err != nil {
					v.mu.Lock()
					if v.writerFailed == "" {
						v.writerFailed = fmt.Sprintf("write of block %d: %v", blk, err)
					}
					v.mu.Unlock()
					v.stop.Store(true)
					return
				}
				v.mu.Lock()
				v.acked++
				v.mu.Unlock()
			}
		})
	}
	go func() {
		wg.Wait()
		f.Close()
		close(v.writerDone)
	}()
}

// stopWriter stops the writer and waits for its writes in flight.
func (v *securedVolume) stopWriter() {
	if v.writerDone == nil {
		return
	}
	v.stop.Store(true)
	<-v.writerDone
}

// waitAcked waits until n more writes than now are acknowledged, and
// fails if the writer stopped (a write failed).
func (v *securedVolume) waitAcked(t *testing.T, n int) {
	t.Helper()
	v.mu.Lock()
	target := v.acked + n
	v.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		v.mu.Lock()
		acked, failed := v.acked, v.writerFailed
		v.mu.Unlock()
		if failed != "" {
			t.Fatalf("the writer stopped after %d acknowledged writes: %s", acked, failed)
		}
		if acked >= target {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d writes acknowledged within 60s", acked, target)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// diskState is what must not change on a replica's disk: the replicas
// it holds, each one's promised epoch (and owner), and the attacked
// range of the volume's data.
type diskState struct {
	replicas []string
	epochs   map[string]string
	attacked []byte
}

func readDiskState(t *testing.T, dir string) diskState {
	t.Helper()
	ents, err := os.ReadDir(dir)
	must.NoError(t, err)
	st := diskState{epochs: map[string]string{}}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		m, err := replica.ReadMeta(dir, e.Name())
		if err != nil {
			continue // not a replica
		}
		st.replicas = append(st.replicas, e.Name())
		st.epochs[e.Name()] = fmt.Sprintf("epoch=%d owner=%d", m.Epoch, m.EpochOwner)
	}
	slices.Sort(st.replicas)
	f, err := os.Open(dataFile(dir, securedVolumeName))
	must.NoError(t, err)
	defer f.Close()
	st.attacked = make([]byte, 64<<10)
	_, err = f.ReadAt(st.attacked, attackOffset)
	must.NoError(t, err)
	return st
}

// attacker is a client of the replica port with some credential.
type attacker struct {
	name string
	dial replication.Dialer
	// denied: the peer authenticates but intentions refuse it, so the
	// refusal comes back on the wire; else the handshake fails.
	denied bool
}

// tlsDialer dials with a fixed client TLS config (no Consul in it).
func tlsDialer(cfg *tls.Config) replication.Dialer {
	return func(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
		return d.DialContext(ctx, "tcp", addr)
	}
}

// TestReplicaPortRefusesUnauthorizedClients (issue 11's acceptance): a
// client with no certificate, one with a certificate Consul's CA did
// not sign (claiming to be saddlebag-node), and one with a valid Consul
// certificate of an identity the installed intentions deny each try
// PROMISE, DELETE, WRITE and READ on both nodes' replica ports, against
// the volume in use and against a closed spare replica. Every request is
// refused, the denied identity learns why and is logged by name, nothing
// changes on disk (replica list, promised epochs, data), and the volume
// keeps serving writes throughout. A control probe with the node's own
// identity does take effect, so the probe is not what fails.
func TestReplicaPortRefusesUnauthorizedClients(t *testing.T) {
	v := startSecuredVolume(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// A closed replica on n2, made by the controller's identity.
	controller := secureDialer(t, v.dev.HTTPAddr, connecttls.ControllerService)
	_, err := replication.CreateReplica(ctx, controller, v.a2, "spare", 1<<20, 10*time.Second)
	must.NoError(t, err)
	// Control: the node's own identity really promises, writes, reads
	// and deletes (on a replica of its own, "control").
	node := secureDialer(t, v.dev.HTTPAddr, connecttls.NodeService)
	_, err = replication.CreateReplica(ctx, node, v.a2, "control", 1<<20, 10*time.Second)
	must.NoError(t, err)
	junk := bytes.Repeat([]byte{0xee}, 4096)
	res := replication.Probe(ctx, node, v.a2, "control", 1<<20, 5, 0, junk, 10*time.Second)
	must.NoError(t, res.Promise)
	must.NoError(t, res.Write)
	must.NoError(t, res.Read)
	if res.Delete != nil { // busy while the read's connection closes
		must.ErrorIs(t, res.Delete, wire.ErrReplicaBusy)
		waitForCond(t, 10*time.Second, "control replica deleted", func() bool {
			return replication.DeleteReplica(ctx, node, v.a2, "control", 10*time.Second) == nil
		})
	}
	_, err = replica.ReadMeta(v.d2, "control")
	must.ErrorIs(t, err, os.ErrNotExist)

	before := map[string]diskState{v.d1: readDiskState(t, v.d1), v.d2: readDiskState(t, v.d2)}
	must.Eq(t, []string{"spare", securedVolumeName}, before[v.d2].replicas)
	must.Eq(t, make([]byte, 64<<10), before[v.d1].attacked)

	forged, err := connecttls.ForgeLeaf(connectSource(t, v.dev.HTTPAddr, connecttls.NodeService).TrustDomain(), connecttls.NodeService)
	must.NoError(t, err)
	intruder := connectSource(t, v.dev.HTTPAddr, "intruder")
	attackers := []attacker{
		{name: "no certificate", dial: tlsDialer(&tls.Config{InsecureSkipVerify: true})},
		{name: "certificate Consul did not sign", dial: tlsDialer(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{forged}})},
		{name: "identity an intention denies", denied: true, dial: func(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
			return intruder.Dial(ctx, addr, connecttls.NodeService, timeout)
		}},
	}
	attack := bytes.Repeat([]byte{0xa7}, 4096)
	for _, a := range attackers {
		for _, target := range []struct{ addr, volume string }{{v.a1, securedVolumeName}, {v.a2, securedVolumeName}, {v.a2, "spare"}} {
			size := int64(securedVolumeSize)
			if target.volume == "spare" {
				size = 1 << 20
			}
			// An epoch just above the primary's: a promise accepted would
			// fence it at once.
			res := replication.Probe(ctx, a.dial, target.addr, target.volume, size, 1000, min(attackOffset, size-4096), attack, 10*time.Second)
			for op, err := range map[string]error{"PROMISE": res.Promise, "WRITE": res.Write, "READ": res.Read, "DELETE": res.Delete} {
				what := fmt.Sprintf("%s: %s of %s at %s", a.name, op, target.volume, target.addr)
				must.Error(t, err, must.Sprint(what+" was accepted"))
				t.Logf("%s: refused: %v", what, err)
				if a.denied {
					must.True(t, errors.Is(err, wire.ErrPermissionDenied), must.Sprintf("%s: %v", what, err))
					must.StrContains(t, err.Error(), "/svc/intruder may not reach saddlebag-node")
				} else {
					must.False(t, errors.Is(err, wire.ErrPermissionDenied), must.Sprintf("%s: %v", what, err))
				}
			}
		}
		// The volume keeps serving between attackers.
		v.waitAcked(t, 100)
	}
	// Each node logged the refusals, the denied one by its identity.
	for _, n := range []*proc{v.n1, v.n2} {
		n.waitLine(t, regexpMust(`refused connection: peer not authorized: .*identity=spiffe://\S+/svc/intruder`), 10*time.Second)
		n.waitLine(t, regexpMust(`refused connection: authentication failed`), 10*time.Second)
	}
	v.waitAcked(t, 200)
	v.stopWriter()

	for dir, b := range before {
		after := readDiskState(t, dir)
		must.Eq(t, b.replicas, after.replicas, must.Sprintf("replica list of %s", dir))
		must.Eq(t, b.epochs, after.epochs, must.Sprintf("promised epochs of %s", dir))
		must.Eq(t, b.attacked, after.attacked, must.Sprintf("attacked range of %s", dir))
	}
	for _, n := range []*proc{v.n1, v.n2} {
		n.mu.Lock()
		for _, l := range n.lines {
			if strings.Contains(l, "fenced") || strings.Contains(l, "lease lost") {
				t.Errorf("the primary was disturbed: %s", l)
			}
		}
		n.mu.Unlock()
	}
}

// rotateCA gives Consul's built-in CA a new private key: Consul makes a
// new root, publishes it beside the old one, and re-signs every leaf.
func rotateCA(t *testing.T, c *api.Client) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	must.NoError(t, err)
	der, err := x509.MarshalECPrivateKey(key)
	must.NoError(t, err)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	_, err = c.Connect().CASetConfig(&api.CAConfig{Provider: "consul", Config: map[string]any{"PrivateKey": string(keyPEM)}}, nil)
	must.NoError(t, err)
}

// TestCertificateRotationUnderWrites (issue 11's acceptance): Consul's CA
// root is rotated (a new built-in CA key) under a running volume with
// writes going on, twice. Both nodes pick up the new roots and renewed
// leaves through their blocking queries without dropping a connection;
// no write fails. New handshakes use the new certificates: a replica
// node SIGKILLed and restarted after the rotation is reconnected by the
// primary and resynced, and the controller's identity, fetched afresh,
// creates a replica on the primary's node.
func TestCertificateRotationUnderWrites(t *testing.T) {
	v := startSecuredVolume(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rootsChanged := regexpMust(`connect CA roots changed`)
	renewed := regexpMust(`connect leaf certificate renewed`)
	for round := 1; round <= 2; round++ {
		rotateCA(t, v.api)
		for _, n := range []*proc{v.n1, v.n2} {
			n.waitCount(t, rootsChanged, round, 60*time.Second)
			n.waitCount(t, renewed, round, 60*time.Second)
		}
		v.waitAcked(t, 300)
	}
	// The primary's connections made before the rotations are still the
	// ones in use: nothing was dropped.
	v.n1.mu.Lock()
	for _, l := range v.n1.lines {
		if strings.Contains(l, "dropping replica") || strings.Contains(l, "fenced") {
			t.Errorf("the rotation disturbed the volume: %s", l)
		}
	}
	v.n1.mu.Unlock()

	// A new handshake with the new certificates: n2 restarted.
	v.n2.kill()
	v.waitAcked(t, 100) // writes go on with n1 alone
	v.n2 = startProc(t, v.n2Args...)
	v.n1.waitLine(t, regexpMust(`resync complete: replica back in sync: .*replica=`+regexp.QuoteMeta(v.a2)), 90*time.Second)
	controller := secureDialer(t, v.dev.HTTPAddr, connecttls.ControllerService)
	_, err := replication.CreateReplica(ctx, controller, v.a1, "after-rotation", 1<<20, 10*time.Second)
	must.NoError(t, err)
	v.waitAcked(t, 300)
	v.stopWriter()
}

// TestForwardChannelRefusesOtherIdentities: the active controller's
// forward channel (where standbys send mutating CSI calls) is mutual TLS
// and answers only saddlebag-controller identities: another controller
// identity is served, a saddlebag-node identity (which intentions do
// not allow there) gets PermissionDenied naming it and is logged, and a
// client without a certificate or with a forged one gets nothing.
func TestForwardChannelRefusesOtherIdentities(t *testing.T) {
	dev := testcluster.Dev(t, testcluster.Options{})
	out, err := exec.Command(saddlebagBin, "setup-intentions", "--consul-addr", dev.HTTPAddr).CombinedOutput()
	must.NoError(t, err, must.Sprint(string(out)))
	dir := t.TempDir()
	p, _ := startController(t, dev.HTTPAddr, "c1", dir)
	p.waitLine(t, activeControlRE, 30*time.Second)
	c := consulClient(t, dev.HTTPAddr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lead, err := c.ReadLeader(ctx)
	must.NoError(t, err)

	call := func(creds credentials.TransportCredentials) error {
		conn, err := grpc.NewClient("passthrough:///"+lead.ForwardAddr, grpc.WithTransportCredentials(creds))
		must.NoError(t, err)
		defer conn.Close()
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err = csi.NewControllerClient(conn).ListVolumes(cctx, &csi.ListVolumesRequest{})
		return err
	}
	ctl := connectSource(t, dev.HTTPAddr, connecttls.ControllerService)
	must.NoError(t, call(credentials.NewTLS(ctl.ClientConfig(connecttls.ControllerService))))

	node := connectSource(t, dev.HTTPAddr, connecttls.NodeService)
	err = call(credentials.NewTLS(node.ClientConfig(connecttls.ControllerService)))
	st := mustCode(t, codes.PermissionDenied, err)
	must.StrContains(t, st.Message(), "/svc/saddlebag-node may not reach saddlebag-controller")
	p.waitLine(t, regexpMust(`refused call: peer not authorized: .*identity=spiffe://\S+/svc/saddlebag-node`), 10*time.Second)

	forged, err := connecttls.ForgeLeaf(ctl.TrustDomain(), connecttls.ControllerService)
	must.NoError(t, err)
	for name, cfg := range map[string]*tls.Config{
		"no certificate": {InsecureSkipVerify: true},
		"forged":         {InsecureSkipVerify: true, Certificates: []tls.Certificate{forged}},
	} {
		err := call(credentials.NewTLS(cfg))
		must.Error(t, err, must.Sprint(name))
		must.Eq(t, codes.Unavailable, status.Code(err), must.Sprintf("%s: %v", name, err))
		t.Logf("%s: %v", name, err)
	}
}
