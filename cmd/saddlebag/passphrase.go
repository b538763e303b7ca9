package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/internal/volkey"
	"github.com/saddlebag/saddlebag/leader"
)

const passphraseUsage = `usage:
  saddlebag volume passphrase add VOLUME_ID [--consul-addr ADDR ...]
      reads two lines from standard input: a passphrase that opens the
      volume now, then the passphrase to add; both open it afterwards
  saddlebag volume passphrase remove VOLUME_ID [--consul-addr ADDR ...]
      reads one line from standard input: the passphrase to remove
      (never the last one)
Rotation: add the new passphrase, set it in the volume's secrets in Nomad
(nomad volume register FILE), then remove the old one. The data key and
the blocks do not change; running primaries are not affected.`

// volumePassphrase adds or removes an encrypted volume's passphrase: it
// reseals the volume's data key in its record in Consul (check-and-set).
// Passphrases are read from stdin, never from arguments (which other
// users of the host can read) and never printed.
func volumePassphrase(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New("want add or remove, then a volume id")}
	}
	op := args[0]
	if op != "add" && op != "remove" {
		return usageError{fmt.Errorf("unknown passphrase subcommand %q: want add or remove", op)}
	}
	fs := newFlagSet("volume passphrase " + op)
	var consul leader.ConsulConfig
	addConsulFlags(fs, &consul)
	rest, err := parseInterspersed(fs, args[1:], volumeUsage)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usageError{errors.New("want exactly one volume id\n" + passphraseUsage)}
	}
	id := rest[0]
	lines := bufio.NewScanner(stdin)
	lines.Buffer(make([]byte, 4096), volspec.MaxPassphrase+2)
	read := func(what string) (string, error) {
		if !lines.Scan() {
			if err := lines.Err(); err != nil {
				return "", fmt.Errorf("read %s from standard input: %w", what, err)
			}
			return "", fmt.Errorf("standard input ended before %s", what)
		}
		return strings.TrimSuffix(lines.Text(), "\r"), nil
	}
	first, err := read("the passphrase")
	if err != nil {
		return err
	}
	var added string
	if op == "add" {
		if added, err = read("the passphrase to add"); err != nil {
			return err
		}
	}
	client, err := leader.NewClient(consul, newLogger("saddlebag", "warn"))
	if err != nil {
		return err
	}
	rec, index, err := client.GetVolume(ctx, id)
	if err != nil {
		return err
	}
	if rec.Encryption == nil {
		return fmt.Errorf("volume %s is not encrypted", id)
	}
	var next volkey.Record
	if op == "add" {
		next, err = rec.Encryption.AddPassphrase(id, first, added, volkey.DefaultParams)
	} else {
		next, err = rec.Encryption.RemovePassphrase(id, first)
	}
	if err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	rec.Encryption = &next
	if _, err := client.PutVolume(ctx, rec, index, nil); err != nil {
		if errors.Is(err, leader.ErrConflict) {
			return fmt.Errorf("volume %s: its record changed while the key was resealed; nothing was written: run the command again (%w)", id, err)
		}
		return err
	}
	if op == "add" {
		fmt.Fprintf(stdout, "volume %s: passphrase added (%d in use). Set it in the volume's secrets in Nomad (nomad volume register FILE), then remove the old one with: saddlebag volume passphrase remove %s\n",
			id, len(next.Slots), id)
	} else {
		fmt.Fprintf(stdout, "volume %s: passphrase removed (%d in use)\n", id, len(next.Slots))
	}
	return nil
}
