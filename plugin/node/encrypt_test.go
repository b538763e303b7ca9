package node

import (
	"testing"

	"github.com/shoenig/test/must"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/saddlebag/saddlebag/hcl/volspec"
	"github.com/saddlebag/saddlebag/internal/volkey"
	"github.com/saddlebag/saddlebag/leader"
)

// volspec checks passphrases without importing volkey: the rules agree.
func TestPassphraseRulesAgree(t *testing.T) {
	must.Eq(t, volkey.MinPassphrase, volspec.MinPassphrase)
	must.Eq(t, volkey.MaxPassphrase, volspec.MaxPassphrase)
}

// stageKey: a plain volume needs nothing; an encrypted one a passphrase
// that opens its key; missing and wrong are InvalidArgument naming the
// secret, never quoting it.
func TestStageKey(t *testing.T) {
	const pass = "stage-key-passphrase"
	kr, want, err := volkey.New("v1", pass, volkey.Params{Time: 1, MemoryKiB: 64, Threads: 1})
	must.NoError(t, err)
	enc := leader.VolumeRecord{ID: "v1", Encryption: &kr, Spec: leader.VolumeSpec{Parameters: map[string]string{"encrypted": "true"}}}

	key, err := stageKey(leader.VolumeRecord{ID: "p"}, nil)
	must.NoError(t, err)
	must.Nil(t, key)

	key, err = stageKey(enc, map[string]string{volspec.SecretPassphrase: pass})
	must.NoError(t, err)
	must.Eq(t, want, key)

	for name, secrets := range map[string]map[string]string{
		"missing": nil,
		"other":   {"token": pass},
		"wrong":   {volspec.SecretPassphrase: pass + "x"},
		"short":   {volspec.SecretPassphrase: "abc"},
	} {
		t.Run(name, func(t *testing.T) {
			key, err := stageKey(enc, secrets)
			must.Nil(t, key)
			st, _ := status.FromError(err)
			must.Eq(t, codes.InvalidArgument, st.Code())
			must.StrContains(t, st.Message(), "encryption_passphrase")
			must.StrNotContains(t, st.Message(), pass)
			must.StrNotContains(t, st.Message(), "abc")
		})
	}

	// Marked encrypted but no key record: refused, never served plain.
	broken := enc
	broken.Encryption = nil
	_, err = stageKey(broken, map[string]string{volspec.SecretPassphrase: pass})
	st, _ := status.FromError(err)
	must.Eq(t, codes.Internal, st.Code())
}
