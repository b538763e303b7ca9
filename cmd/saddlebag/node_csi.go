package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	"github.com/saddlebag/saddlebag/internal/fdkeeper"
	"github.com/saddlebag/saddlebag/leader"
	"github.com/saddlebag/saddlebag/plugin"
	csinode "github.com/saddlebag/saddlebag/plugin/node"
	"github.com/saddlebag/saddlebag/replication"
)

// csiNodeFlags are `saddlebag node`'s CSI settings.
type csiNodeFlags struct {
	endpoint, stateDir, hostDir, pluginMount string
	keeperSocket                             string
	handOverTimeout                          time.Duration
	maxVolumes                               int64
	stageTimeout                             time.Duration
}

func addCSINodeFlags(fs *flag.FlagSet, f *csiNodeFlags) {
	fs.StringVar(&f.endpoint, "csi-endpoint", os.Getenv(plugin.EndpointEnv), "serve the CSI node service on this unix socket (unix:///path; default $CSI_ENDPOINT, which Nomad sets; empty: no CSI)")
	fs.StringVar(&f.stateDir, "csi-state-dir", "", "where staged volumes' FUSE files and checkpoints live (default /run/saddlebag/csi-<node>)")
	fs.StringVar(&f.hostDir, "host-csi-dir", "", "under raw_exec with Nomad's default stage_publish_base_dir: the host directory <client data_dir>/client/csi/node/<plugin id> that --csi-plugin-mount paths are translated to")
	fs.StringVar(&f.pluginMount, "csi-plugin-mount", csinode.DefaultPluginMount, "the stage_publish_base_dir Nomad passes paths under (translated with --host-csi-dir)")
	fs.Int64Var(&f.maxVolumes, "max-volumes", 0, "volumes this node takes, reported as max_volumes_per_node (0: no limit)")
	fs.DurationVar(&f.stageTimeout, "stage-timeout", 60*time.Second, "how long NodeStageVolume waits for the volume's primary lease")
	fs.StringVar(&f.keeperSocket, "keeper-socket", "", "socket of `saddlebag keeper`: staged volumes are parked there and survive a restart, crash or upgrade of this process (empty: volumes are unstaged when it stops)")
	fs.DurationVar(&f.handOverTimeout, "hand-over-timeout", csinode.DefaultHandOverTimeout, "with --keeper-socket: how long a stop waits for FUSE requests already read before handing the volumes over")
}

func (f *csiNodeFlags) check(node string) error {
	if f.maxVolumes < 0 {
		return usageError{errors.New("--max-volumes is negative")}
	}
	if f.endpoint == "" {
		return nil
	}
	if _, err := plugin.SocketPath(f.endpoint); err != nil {
		return usageError{fmt.Errorf("--csi-endpoint: %w", err)}
	}
	if f.stateDir == "" {
		f.stateDir = filepath.Join("/run/saddlebag", "csi-"+node)
	}
	return nil
}

// serveCSINode serves the CSI Identity and Node services until ctx ends,
// then unstages whatever is still staged (releasing the leases).
func serveCSINode(ctx context.Context, f *nodeFlags, agent *leader.Agent, client *leader.Client, labels map[string]string,
	dial replication.Dialer, log hclog.Logger) error {
	var keeper *fdkeeper.Client
	if f.csi.keeperSocket != "" {
		// The FUSE directory lets the keeper free this process should it
		// get stuck exiting (plugin/node's fuseDir: <state dir>/fuse/<id>).
		stateDir, err := filepath.Abs(f.csi.stateDir)
		if err != nil {
			return err
		}
		keeper = &fdkeeper.Client{Path: f.csi.keeperSocket, FUSEDir: filepath.Join(stateDir, "fuse")}
	}
	node, err := csinode.New(csinode.Config{
		Agent: agent, Client: client, NodeID: f.node, Labels: labels, MaxVolumes: f.csi.maxVolumes,
		StateDir: f.csi.stateDir, Paths: csinode.PathMapper{HostDir: f.csi.hostDir, PluginMount: f.csi.pluginMount},
		StageTimeout: f.csi.stageTimeout, ResyncRate: int64(f.resyncRate), Dial: dial, Log: log, Keeper: keeper, HandOverTimeout: f.csi.handOverTimeout,
	})
	if err != nil {
		return err
	}
	csiNodeService.Store(node)
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if keeper != nil {
			// An upgrade or a restart: the volumes stay staged, parked
			// in the keeper, for the next node process.
			node.HandOver(sctx)
			return
		}
		node.Shutdown(sctx)
	}()
	// Volumes a previous process parked are served again before any
	// CSI call is.
	if err := node.Adopt(ctx); err != nil {
		return err
	}
	id := &plugin.Identity{Version: version, Ready: func() bool { return agent.SessionID() != "" }}
	return plugin.Serve(ctx, f.csi.endpoint, log, func(s *grpc.Server) {
		csi.RegisterIdentityServer(s, id)
		csi.RegisterNodeServer(s, node)
	})
}
