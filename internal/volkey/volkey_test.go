package volkey

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/shoenig/test/must"
)

// cheap keeps the tests fast; the defaults are checked apart.
var cheap = Params{Time: 1, MemoryKiB: 64, Threads: 1}

const pass = "correct horse battery staple"

func TestNewOpenRoundTrip(t *testing.T) {
	t.Parallel()
	rec, key, err := New("vol1", pass, cheap)
	must.NoError(t, err)
	must.Len(t, KeySize, key)
	must.NoError(t, rec.Check())
	got, err := rec.Open("vol1", pass)
	must.NoError(t, err)
	must.Eq(t, key, got)

	// Through JSON, as it is stored in Consul.
	b, err := json.Marshal(rec)
	must.NoError(t, err)
	dec, err := Decode(b)
	must.NoError(t, err)
	got, err = dec.Open("vol1", pass)
	must.NoError(t, err)
	must.Eq(t, key, got)

	// Two volumes with the same passphrase get different keys and salts.
	rec2, key2, err := New("vol1", pass, cheap)
	must.NoError(t, err)
	must.NotEq(t, key, key2)
	must.NotEq(t, rec.Slots[0].Salt, rec2.Slots[0].Salt)
}

func TestOpenRefuses(t *testing.T) {
	t.Parallel()
	rec, _, err := New("vol1", pass, cheap)
	must.NoError(t, err)
	for name, open := range map[string]func() ([]byte, error){
		"wrong passphrase": func() ([]byte, error) { return rec.Open("vol1", pass+"!") },
		"short passphrase": func() ([]byte, error) { return rec.Open("vol1", "x") },
		"empty passphrase": func() ([]byte, error) { return rec.Open("vol1", "") },
		"other volume":     func() ([]byte, error) { return rec.Open("vol2", pass) },
		"changed params": func() ([]byte, error) {
			r := editSlot(rec, func(s *Slot) { s.Time = 2 })
			return r.Open("vol1", pass)
		},
		"changed salt": func() ([]byte, error) {
			r := editSlot(rec, func(s *Slot) { s.Salt = bytes.Clone(s.Salt); s.Salt[0] ^= 1 })
			return r.Open("vol1", pass)
		},
		"changed sealed key": func() ([]byte, error) {
			r := editSlot(rec, func(s *Slot) { s.Sealed = bytes.Clone(s.Sealed); s.Sealed[3] ^= 1 })
			return r.Open("vol1", pass)
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			key, err := open()
			must.Nil(t, key)
			must.ErrorIs(t, err, ErrWrongPassphrase)
		})
	}
}

// editSlot returns rec with its first slot changed by f.
func editSlot(rec Record, f func(*Slot)) Record {
	rec.Slots = slices.Clone(rec.Slots)
	f(&rec.Slots[0])
	return rec
}

// Rotation: a second passphrase is added (both open the same key), then
// the first removed; the last one never is, nor one that opens nothing.
func TestRotatePassphrase(t *testing.T) {
	t.Parallel()
	const next = "a new passphrase"
	rec, key, err := New("vol1", pass, cheap)
	must.NoError(t, err)
	_, err = rec.AddPassphrase("vol1", "not the passphrase", next, cheap)
	must.ErrorIs(t, err, ErrWrongPassphrase)
	_, err = rec.AddPassphrase("vol1", pass, pass, cheap)
	must.ErrorIs(t, err, ErrSlots)
	_, err = rec.RemovePassphrase("vol1", pass)
	must.ErrorIs(t, err, ErrSlots)

	both, err := rec.AddPassphrase("vol1", pass, next, cheap)
	must.NoError(t, err)
	must.Len(t, 2, both.Slots)
	must.Len(t, 1, rec.Slots) // the original is not changed
	for _, p := range []string{pass, next} {
		got, err := both.Open("vol1", p)
		must.NoError(t, err)
		must.Eq(t, key, got, must.Sprint("rotation must keep the data key: the blocks do not change"))
	}
	b, err := json.Marshal(both)
	must.NoError(t, err)
	both, err = Decode(b)
	must.NoError(t, err)

	_, err = both.RemovePassphrase("vol1", "not the passphrase")
	must.ErrorIs(t, err, ErrWrongPassphrase)
	after, err := both.RemovePassphrase("vol1", pass)
	must.NoError(t, err)
	must.Len(t, 1, after.Slots)
	_, err = after.Open("vol1", pass)
	must.ErrorIs(t, err, ErrWrongPassphrase)
	got, err := after.Open("vol1", next)
	must.NoError(t, err)
	must.Eq(t, key, got)

	full := rec
	for i := 1; i < MaxSlots; i++ {
		full, err = full.AddPassphrase("vol1", pass, fmt.Sprintf("passphrase number %d", i), cheap)
		must.NoError(t, err)
	}
	_, err = full.AddPassphrase("vol1", pass, "one too many", cheap)
	must.ErrorIs(t, err, ErrSlots)
}

func TestDefaultParamsValid(t *testing.T) {
	t.Parallel()
	must.NoError(t, DefaultParams.Check())
}

func TestDecodeRefuses(t *testing.T) {
	t.Parallel()
	rec, _, err := New("vol1", pass, cheap)
	must.NoError(t, err)
	good, err := json.Marshal(rec)
	must.NoError(t, err)
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		must.NoError(t, json.Unmarshal(good, &m))
		f(m)
		b, err := json.Marshal(m)
		must.NoError(t, err)
		return b
	}
	editSlot0 := func(f func(m map[string]any)) []byte {
		return edit(func(m map[string]any) { f(m["slots"].([]any)[0].(map[string]any)) })
	}
	for name, b := range map[string][]byte{
		"not json":           []byte("{"),
		"trailing":           append(bytes.Clone(good), []byte(" {}")...),
		"unknown field":      edit(func(m map[string]any) { m["extra"] = 1 }),
		"version":            edit(func(m map[string]any) { m["version"] = 2 }),
		"cipher":             edit(func(m map[string]any) { m["cipher"] = "aes-128-cbc" }),
		"kdf":                edit(func(m map[string]any) { m["kdf"] = "pbkdf2" }),
		"huge memory":        editSlot0(func(m map[string]any) { m["memory_kib"] = MaxMemoryKiB + 1 }),
		"zero time":          editSlot0(func(m map[string]any) { m["time"] = 0 }),
		"many threads":       editSlot0(func(m map[string]any) { m["threads"] = 200 }),
		"short salt":         editSlot0(func(m map[string]any) { m["salt"] = "AAAA" }),
		"short sealed":       editSlot0(func(m map[string]any) { m["sealed_key"] = "AAAA" }),
		"missing nonce":      editSlot0(func(m map[string]any) { delete(m, "nonce") }),
		"memory < thread":    editSlot0(func(m map[string]any) { m["threads"], m["memory_kib"] = 4, 16 }),
		"unknown slot field": editSlot0(func(m map[string]any) { m["x"] = 1 }),
		"no slots":           edit(func(m map[string]any) { m["slots"] = []any{} }),
		"too many slots": edit(func(m map[string]any) {
			s := m["slots"].([]any)
			m["slots"] = []any{s[0], s[0], s[0], s[0], s[0]}
		}),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := Decode(b)
			must.ErrorIs(t, err, ErrInvalidRecord)
		})
	}
}

// No error and no record's JSON carries the passphrase or the data key,
// in any common encoding.
func TestNothingSecretLeaks(t *testing.T) {
	t.Parallel()
	rec, key, err := New("vol1", pass, cheap)
	must.NoError(t, err)
	b, err := json.Marshal(rec)
	must.NoError(t, err)
	var texts []string
	texts = append(texts, string(b))
	_, err = rec.Open("vol1", "wrong "+pass)
	texts = append(texts, err.Error())
	_, err = rec.Open("vol1", "short")
	texts = append(texts, err.Error())
	_, _, err = New("vol1", "short", cheap)
	texts = append(texts, err.Error())
	for _, s := range texts {
		for _, secret := range secretForms(pass, key) {
			if strings.Contains(s, secret) {
				t.Fatalf("%q contains a secret", s)
			}
		}
		must.StrNotContains(t, s, "short")
	}
	must.True(t, errors.Is(err, ErrBadPassphrase))
}

// secretForms lists a passphrase and key as they could appear in text.
func secretForms(passphrase string, key []byte) []string {
	return []string{passphrase, string(key), hex.EncodeToString(key), strings.ToUpper(hex.EncodeToString(key)),
		base64.StdEncoding.EncodeToString(key), base64.RawStdEncoding.EncodeToString(key),
		base64.URLEncoding.EncodeToString(key), base64.RawURLEncoding.EncodeToString(key),
		base64.StdEncoding.EncodeToString([]byte(passphrase))}
}

// FuzzDecodeRecord: no input makes Decode panic; whatever it accepts is
// within bounds, survives a JSON round trip unchanged, and opens only
// with the key it seals (never with a guessed passphrase).
func FuzzDecodeRecord(f *testing.F) {
	rec, _, err := New("vol1", pass, cheap)
	if err != nil {
		f.Fatal(err)
	}
	good, _ := json.Marshal(rec)
	f.Add(good)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"version":1,"cipher":"aes-256-xts-plain64-4k","kdf":"argon2id","wrap":"aes-256-gcm","slots":[{"time":1,"memory_kib":8,"threads":1}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidRecord) {
				t.Fatalf("error %v does not wrap ErrInvalidRecord", err)
			}
			return
		}
		if err := r.Check(); err != nil {
			t.Fatalf("Decode accepted a record Check refuses: %v", err)
		}
		if len(r.Slots) > MaxSlots {
			t.Fatalf("%d slots accepted", len(r.Slots))
		}
		cheapEnough := true
		for _, s := range r.Slots {
			if s.MemoryKiB > MaxMemoryKiB || s.Time > MaxTime || s.Threads > MaxThreads {
				t.Fatalf("unbounded params accepted: %+v", s.Params)
			}
			cheapEnough = cheapEnough && s.MemoryKiB <= 1024 && s.Time <= 2
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := Decode(again)
		if err != nil {
			t.Fatalf("re-encoded record refused: %v", err)
		}
		if !reflect.DeepEqual(r, r2) {
			t.Fatal("round trip changed the record")
		}
		if cheapEnough {
			if _, err := r.Open("vol1", "a guessed passphrase"); !errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("a forged record opened with a guess: %v", err)
			}
		}
	})
}
