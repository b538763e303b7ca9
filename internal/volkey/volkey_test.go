package volkey

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/shoenig/test/must"
)

// cheap keeps the tests fast; the defaults are checked apart.
var cheap = Params{Time: 1, MemoryKiB: 64, Threads: 1}

const pass = "correct horse battery staple"

func TestNewOpenRoundTrip(t *testing.T) {
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
	must.NotEq(t, rec.Salt, rec2.Salt)
}

func TestOpenRefuses(t *testing.T) {
	rec, _, err := New("vol1", pass, cheap)
	must.NoError(t, err)
	for name, open := range map[string]func() ([]byte, error){
		"wrong passphrase": func() ([]byte, error) { return rec.Open("vol1", pass+"!") },
		"short passphrase": func() ([]byte, error) { return rec.Open("vol1", "x") },
		"empty passphrase": func() ([]byte, error) { return rec.Open("vol1", "") },
		"other volume":     func() ([]byte, error) { return rec.Open("vol2", pass) },
		"changed params": func() ([]byte, error) {
			r := rec
			r.Time = 2
			return r.Open("vol1", pass)
		},
		"changed salt": func() ([]byte, error) {
			r := rec
			r.Salt = bytes.Clone(r.Salt)
			r.Salt[0] ^= 1
			return r.Open("vol1", pass)
		},
		"changed sealed key": func() ([]byte, error) {
			r := rec
			r.Sealed = bytes.Clone(r.Sealed)
			r.Sealed[3] ^= 1
			return r.Open("vol1", pass)
		},
	} {
		t.Run(name, func(t *testing.T) {
			key, err := open()
			must.Nil(t, key)
			must.ErrorIs(t, err, ErrWrongPassphrase)
		})
	}
}

func TestRewrap(t *testing.T) {
	rec, key, err := New("vol1", pass, cheap)
	must.NoError(t, err)
	_, err = rec.Rewrap("vol1", "not the passphrase", "a new passphrase", cheap)
	must.ErrorIs(t, err, ErrWrongPassphrase)
	next, err := rec.Rewrap("vol1", pass, "a new passphrase", cheap)
	must.NoError(t, err)
	must.NotEq(t, rec.Salt, next.Salt)
	got, err := next.Open("vol1", "a new passphrase")
	must.NoError(t, err)
	must.Eq(t, key, got, must.Sprint("rotation must keep the data key: the blocks do not change"))
	_, err = next.Open("vol1", pass)
	must.ErrorIs(t, err, ErrWrongPassphrase)
}

func TestDefaultParamsValid(t *testing.T) {
	must.NoError(t, DefaultParams.Check())
}

func TestDecodeRefuses(t *testing.T) {
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
	for name, b := range map[string][]byte{
		"not json":        []byte("{"),
		"trailing":        append(bytes.Clone(good), []byte(" {}")...),
		"unknown field":   edit(func(m map[string]any) { m["extra"] = 1 }),
		"version":         edit(func(m map[string]any) { m["version"] = 2 }),
		"cipher":          edit(func(m map[string]any) { m["cipher"] = "aes-128-cbc" }),
		"kdf":             edit(func(m map[string]any) { m["kdf"] = "pbkdf2" }),
		"huge memory":     edit(func(m map[string]any) { m["memory_kib"] = MaxMemoryKiB + 1 }),
		"zero time":       edit(func(m map[string]any) { m["time"] = 0 }),
		"many threads":    edit(func(m map[string]any) { m["threads"] = 200 }),
		"short salt":      edit(func(m map[string]any) { m["salt"] = "AAAA" }),
		"short sealed":    edit(func(m map[string]any) { m["sealed_key"] = "AAAA" }),
		"missing nonce":   edit(func(m map[string]any) { delete(m, "nonce") }),
		"memory < thread": edit(func(m map[string]any) { m["threads"], m["memory_kib"] = 4, 16 }),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Decode(b)
			must.ErrorIs(t, err, ErrInvalidRecord)
		})
	}
}

// No error and no record's JSON carries the passphrase or the data key,
// in any common encoding.
func TestNothingSecretLeaks(t *testing.T) {
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
	f.Add([]byte(`{"version":1,"cipher":"aes-256-xts-plain64-4k","kdf":"argon2id","time":1,"memory_kib":8,"threads":1}`))
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
		if r.MemoryKiB > MaxMemoryKiB || r.Time > MaxTime || r.Threads > MaxThreads {
			t.Fatalf("unbounded params accepted: %+v", r.Params)
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := Decode(again)
		if err != nil {
			t.Fatalf("re-encoded record refused: %v", err)
		}
		if !bytes.Equal(r.Salt, r2.Salt) || !bytes.Equal(r.Sealed, r2.Sealed) || !bytes.Equal(r.Nonce, r2.Nonce) || r.Params != r2.Params {
			t.Fatal("round trip changed the record")
		}
		if r.MemoryKiB <= 1024 && r.Time <= 2 {
			if _, err := r.Open("vol1", "a guessed passphrase"); !errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("a forged record opened with a guess: %v", err)
			}
		}
	})
}
