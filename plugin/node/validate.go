package node

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"

	"github.com/saddlebag/saddlebag/plugin/internal/rpc"
)

// The paths a request carries are untrusted like its ids (which
// plugin/internal/rpc checks): each Node RPC checks its staging and
// target paths here, before anything touches a file, and a path that
// fails is InvalidArgument naming the field and the rule.

// maxPathBytes bounds a staging or target path (PATH_MAX).
const maxPathBytes = 4096

// pathProblem says why p is not a path the CO may pass ("" when it is):
// CSI's staging and target paths are absolute and chosen by the CO, so a
// relative path, one with "." or ".." elements, a doubled or trailing
// slash, a control character or more than PATH_MAX bytes is never one.
func pathProblem(p string) string {
	switch {
	case len(p) > maxPathBytes:
		return "is longer than 4096 bytes"
	case strings.ContainsFunc(p, unicode.IsControl) || !utf8.ValidString(p):
		return "contains a control character or invalid UTF-8"
	case !filepath.IsAbs(p):
		return "is not absolute"
	case filepath.Clean(p) != p:
		return "is not clean (\".\" or \"..\" elements, doubled or trailing slashes)"
	}
	return ""
}

// checkPath checks a path field the CO passes (see pathProblem).
func checkPath(field, p string) error {
	if p == "" {
		return rpc.Errf(codes.InvalidArgument, "%s is required", field)
	}
	if why := pathProblem(p); why != "" {
		return rpc.Errf(codes.InvalidArgument, "%s %.200q %s", field, p, why)
	}
	return nil
}

// hostPath checks a path field and translates it to the host path the
// node acts on (PathMapper). The host path must not lie inside the
// plugin's own state directory, must not be a symlink itself (a mount
// onto it would land where it points), and, when the CO's base directory
// is known (Paths.HostDir), must still be inside it with every symlink
// on the way resolved.
func (n *Node) hostPath(field, p string) (string, error) {
	if err := checkPath(field, p); err != nil {
		return "", err
	}
	h := n.cfg.Paths.Host(p)
	if why := pathProblem(h); why != "" {
		return "", rpc.Errf(codes.InvalidArgument, "%s %q maps to host path %q, which %s", field, p, h, why)
	}
	if within(h, n.cfg.StateDir) || within(n.cfg.StateDir, h) {
		return "", rpc.Errf(codes.InvalidArgument, "%s %q overlaps the plugin's own state directory", field, p)
	}
	if st, err := os.Lstat(h); err == nil && st.Mode()&os.ModeSymlink != 0 {
		return "", rpc.Errf(codes.InvalidArgument, "%s %q is a symlink; the CO passes the real path", field, p)
	}
	if base := n.cfg.Paths.HostDir; base != "" && within(h, filepath.Clean(base)) {
		rb, err := resolveExisting(filepath.Clean(base))
		if err != nil {
			return "", rpc.Errf(codes.Internal, "resolve %s: %v", base, err)
		}
		rh, err := resolveExisting(h)
		if err != nil {
			return "", rpc.Errf(codes.Internal, "resolve %s: %v", h, err)
		}
		if !within(rh, rb) {
			return "", rpc.Errf(codes.InvalidArgument, "%s %q leaves %s through a symlink (to %s)", field, p, base, rh)
		}
	}
	return h, nil
}

// within reports whether p is dir or lies under it (both clean).
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// resolveExisting resolves every symlink of p's longest existing prefix
// and appends the rest unchanged.
func resolveExisting(p string) (string, error) {
	rest := ""
	for cur := p; ; cur = filepath.Dir(cur) {
		r, err := filepath.EvalSymlinks(cur)
		if err == nil {
			return filepath.Join(r, rest), nil
		}
		if !errors.Is(err, os.ErrNotExist) || cur == "/" {
			return "", err
		}
		rest = filepath.Join(filepath.Base(cur), rest)
	}
}
