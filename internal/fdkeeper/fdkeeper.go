// Package fdkeeper is the descriptor keeper of issue 13: a tiny process
// (`saddlebag keeper`, its own Nomad job, rarely changed) that holds a
// duplicate of each staged volume's /dev/fuse descriptor, with a small
// blob of state, so that the FUSE connection, the loop device on it and
// the file system mounted above outlive the `saddlebag node` process that
// serves them: a crash, a restart or an upgrade of that process leaves
// the task's I/O waiting in the kernel, not failing, until the next
// process takes the descriptor back (replication/frontend/fuse.Adopt).
//
// Protocol: a unix SOCK_SEQPACKET socket, one request per connection;
// each message is one JSON object, a descriptor travels with its message
// as SCM_RIGHTS. Only a peer with the keeper's own uid may connect
// (SO_PEERCRED). The keeper keeps nothing on disk: if it dies, the node
// process (which holds its own descriptors) deposits them again.
//
// The keeper also frees a node process stuck exiting (reap.go): killed
// while a thread of it waits in the kernel for I/O on its own FUSE file
// (mount(2) or umount(2) of the file system over it), such a process
// never exits by itself (that thread in D state holding every
// descriptor; the leader a zombie, or itself that thread with SIGKILL
// pending) and Nomad starts no successor. A
// client that names its FUSE directory (Client.FUSEDir: the node does)
// is watched through its pid (SO_PEERCRED); once it has been stuck so
// for Grace, the keeper aborts the FUSE connections of its
// volumes that are not parked here, after another Grace the parked ones
// with requests waiting, after a third every parked one left, each
// logged at Error. A live process, even in D state, is never touched.
// Watching needs the node's pid as the keeper's pid namespace sees it
// (SO_PEERCRED reports 0 for a peer outside it) and its /proc entries,
// and aborting needs fusectl: in containers, the keeper shares the host's
// pid namespace and is privileged (jobs/docker/saddlebag-keeper.nomad.hcl);
// when it cannot watch a node, or reach fusectl, it says so at Error.
// Without the keeper such a process needs, by hand,
// `echo 1 > /sys/fs/fuse/connections/N/abort` (N: the minor device
// number of the stuck volume's FUSE mount).
//
// Every request may also carry fuse_dir, the sender's FUSE directory.
//
//	put   {op, name, meta} + fd     → {ok}
//	list  {op}                      → {name, meta} + fd per entry, then {end}
//	names {op}                      → {names}
//	drop  {op, name}                → {ok}
package fdkeeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// maxMsg bounds one message (a name and its state blob).
const maxMsg = 64 << 10

type message struct {
	Op    string   `json:"op,omitempty"`
	Name  string   `json:"name,omitempty"`
	Meta  []byte   `json:"meta,omitempty"`
	Names []string `json:"names,omitempty"`
	OK    bool     `json:"ok,omitempty"`
	End   bool     `json:"end,omitempty"`
	Error string   `json:"error,omitempty"`
	// FUSEDir is the client's FUSE directory (a node process's): the
	// keeper then watches that process (reap.go).
	FUSEDir string `json:"fuse_dir,omitempty"`
}

// Entry is one kept descriptor.
type Entry struct {
	Name string
	Meta []byte
	File *os.File
}

// Keeper holds descriptors by name.
type Keeper struct {
	// Grace is how long a node process may linger stuck exiting before
	// its unparked FUSE connections are aborted, and as long again
	// before its parked ones are (reap.go); 0 means DefaultGrace. Set it
	// before Serve.
	Grace time.Duration
	// Poll is how often the node processes are looked at; 0 means 500 ms.
	Poll time.Duration

	log       hclog.Logger
	abortConn func(conn uint32) error
	checkMu   sync.Mutex // one watch round at a time

	mu      sync.Mutex
	entries map[string]*Entry
	procs   map[int]*nodeProc
	// unwatched is, by FUSE directory, why the node process that named
	// it cannot be watched (logged once per cause, reap.go's track).
	unwatched map[string]string
}

// New returns an empty keeper.
func New(log hclog.Logger) *Keeper {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Keeper{log: log, entries: map[string]*Entry{}, procs: map[int]*nodeProc{}, unwatched: map[string]string{},
		abortConn: abortFUSEConnection}
}

// Serve accepts requests on a socket at path (its directory is created
// 0700, a stale socket replaced) until ctx ends.
func (k *Keeper) Serve(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("keeper listen: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	k.log.Info("keeping descriptors", "socket", path, "stuck_node_grace", k.grace().String())
	k.checkFusectl()
	go func() { <-ctx.Done(); ln.Close() }()
	go k.watch(ctx)
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go k.handle(c)
	}
}

// Close closes every kept descriptor.
func (k *Keeper) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for n, e := range k.entries {
		e.File.Close()
		delete(k.entries, n)
	}
}

func (k *Keeper) handle(c *net.UnixConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	cred, err := checkPeer(c)
	if err != nil {
		k.log.Warn("refused a connection", "error", err)
		return
	}
	req, files, err := recv(c)
	if err != nil {
		k.log.Warn("bad request", "error", err)
		return
	}
	if req.FUSEDir != "" {
		k.track(int(cred.Pid), req.FUSEDir)
	}
	reply := func(m message, f *os.File) {
		if err := send(c, m, f); err != nil {
			k.log.Warn("reply", "op", req.Op, "error", err)
		}
	}
	switch req.Op {
	case "put":
		if req.Name == "" || len(files) != 1 {
			closeAll(files)
			reply(message{Error: "put needs a name and one descriptor"}, nil)
			return
		}
		k.mu.Lock()
		if old := k.entries[req.Name]; old != nil {
			old.File.Close()
		}
		k.entries[req.Name] = &Entry{Name: req.Name, Meta: req.Meta, File: files[0]}
		k.mu.Unlock()
		k.log.Info("keeping", "name", req.Name)
		reply(message{OK: true}, nil)
	case "drop":
		closeAll(files)
		k.mu.Lock()
		if old := k.entries[req.Name]; old != nil {
			old.File.Close()
			delete(k.entries, req.Name)
			k.log.Info("dropped", "name", req.Name)
		}
		k.mu.Unlock()
		reply(message{OK: true}, nil)
	case "names":
		closeAll(files)
		reply(message{OK: true, Names: k.names()}, nil)
	case "list":
		closeAll(files)
		k.mu.Lock()
		list := make([]Entry, 0, len(k.entries))
		for _, e := range k.entries {
			list = append(list, *e)
		}
		k.mu.Unlock()
		for _, e := range list {
			reply(message{Name: e.Name, Meta: e.Meta}, e.File)
		}
		reply(message{End: true}, nil)
	default:
		closeAll(files)
		reply(message{Error: fmt.Sprintf("unknown op %q", req.Op)}, nil)
	}
}

func (k *Keeper) names() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for n := range k.entries {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// checkPeer admits only a process of the keeper's own uid, and returns
// its credentials.
func checkPeer(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, cerr
	}
	if int(cred.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("peer pid %d uid %d is not uid %d", cred.Pid, cred.Uid, os.Geteuid())
	}
	return cred, nil
}

func send(c *net.UnixConn, m message, f *os.File) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if f == nil {
		_, _, err = c.WriteMsgUnix(b, nil, nil)
		return err
	}
	// Not f.Fd(): that would put the open file, which other processes
	// share (a /dev/fuse relay reads it with deadlines), in blocking mode.
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	if err := rc.Control(func(fd uintptr) {
		_, _, werr = c.WriteMsgUnix(b, unix.UnixRights(int(fd)), nil)
	}); err != nil {
		return err
	}
	return werr
}

func recv(c *net.UnixConn) (message, []*os.File, error) {
	buf := make([]byte, maxMsg)
	oob := make([]byte, unix.CmsgSpace(4*8))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return message{}, nil, err
	}
	var files []*os.File
	if oobn > 0 {
		cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return message{}, nil, err
		}
		for _, cm := range cmsgs {
			fds, err := unix.ParseUnixRights(&cm)
			if err != nil {
				continue
			}
			for _, fd := range fds {
				unix.CloseOnExec(fd)
				files = append(files, os.NewFile(uintptr(fd), "kept"))
			}
		}
	}
	var m message
	if n == 0 {
		closeAll(files)
		return m, nil, errors.New("connection closed")
	}
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		closeAll(files)
		return m, nil, err
	}
	return m, files, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// Client talks to a keeper.
type Client struct {
	Path string
	// FUSEDir, set by a node process, is the absolute directory its
	// volumes' FUSE files are mounted under (<dir>/<id>): with it, the
	// keeper watches the process and frees it should it get stuck
	// exiting (reap.go).
	FUSEDir string
}

func (c Client) dial() (*net.UnixConn, error) {
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: c.Path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("descriptor keeper at %s: %w", c.Path, err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn, nil
}

func (c Client) call(m message, f *os.File) (message, error) {
	m.FUSEDir = c.FUSEDir
	conn, err := c.dial()
	if err != nil {
		return message{}, err
	}
	defer conn.Close()
	if err := send(conn, m, f); err != nil {
		return message{}, err
	}
	r, files, err := recv(conn)
	closeAll(files)
	if err != nil {
		return r, err
	}
	if r.Error != "" {
		return r, fmt.Errorf("descriptor keeper: %s", r.Error)
	}
	return r, nil
}

// Put keeps a duplicate of f (f stays the caller's) under name, with
// meta, replacing any entry of that name.
func (c Client) Put(name string, meta []byte, f *os.File) error {
	_, err := c.call(message{Op: "put", Name: name, Meta: meta}, f)
	return err
}

// Drop closes and forgets the entry (none is fine).
func (c Client) Drop(name string) error {
	_, err := c.call(message{Op: "drop", Name: name}, nil)
	return err
}

// Names lists the kept names.
func (c Client) Names() ([]string, error) {
	r, err := c.call(message{Op: "names"}, nil)
	return r.Names, err
}

// List returns every entry with a duplicate of its descriptor (the
// caller's to close); the keeper keeps its own.
func (c Client) List() ([]Entry, error) {
	conn, err := c.dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := send(conn, message{Op: "list", FUSEDir: c.FUSEDir}, nil); err != nil {
		return nil, err
	}
	var out []Entry
	for {
		m, files, err := recv(conn)
		if err != nil {
			for _, e := range out {
				e.File.Close()
			}
			return nil, err
		}
		if m.End {
			closeAll(files)
			return out, nil
		}
		if len(files) != 1 {
			closeAll(files)
			continue
		}
		out = append(out, Entry{Name: m.Name, Meta: m.Meta, File: files[0]})
	}
}
