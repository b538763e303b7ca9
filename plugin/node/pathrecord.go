package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// pathRecord is what the node remembers of a volume's paths, in
// <state dir>/paths/<volume id>.json: the staging path it was staged at
// and the target paths it was published at. It is written before the
// mounts are made and removed after they are undone, so it survives a
// crash or restart of the node process, and NodeUnstageVolume and
// NodeUnpublishVolume act only on a path recorded here for that volume:
// an unstage or unpublish naming any other path touches nothing.
type pathRecord struct {
	Staging string   `json:"staging"`
	Targets []string `json:"targets,omitempty"`
}

// pathFile is the record's file; id is a checked volume id (one segment).
func (n *Node) pathFile(id string) string { return filepath.Join(n.cfg.StateDir, "paths", id+".json") }

// readPaths returns the volume's record, and false when there is none.
func (n *Node) readPaths(id string) (pathRecord, bool, error) {
	var rec pathRecord
	b, err := os.ReadFile(n.pathFile(id))
	if errors.Is(err, os.ErrNotExist) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, fmt.Errorf("read path record: %w", err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, false, fmt.Errorf("decode path record %s: %w", n.pathFile(id), err)
	}
	return rec, true, nil
}

// writePaths replaces the volume's record atomically.
func (n *Node) writePaths(id string, rec pathRecord) error {
	p := n.pathFile(id)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("path record dir: %w", err)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write path record: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write path record: %w", err)
	}
	return nil
}

// removePaths forgets the volume's record.
func (n *Node) removePaths(id string) error {
	if err := os.Remove(n.pathFile(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove path record: %w", err)
	}
	return nil
}

// addTarget records a target path of a staged volume.
func (n *Node) addTarget(id, target string) error {
	rec, _, err := n.readPaths(id)
	if err != nil {
		return err
	}
	if slices.Contains(rec.Targets, target) {
		return nil
	}
	rec.Targets = append(rec.Targets, target)
	return n.writePaths(id, rec)
}

// removeTarget forgets a target path.
func (n *Node) removeTarget(id, target string) error {
	rec, ok, err := n.readPaths(id)
	if err != nil || !ok {
		return err
	}
	rec.Targets = slices.DeleteFunc(rec.Targets, func(t string) bool { return t == target })
	return n.writePaths(id, rec)
}
