// Package volkey makes and opens the data keys of encrypted volumes
// (issue #11, "at rest").
//
// Each encrypted volume has a random 64-byte data key (AES-256-XTS: two
// AES-256 keys), which the primary uses to encrypt every block before it
// is replicated (replication/encrypt.Device). The data key is never
// stored in the clear: it is sealed with AES-256-GCM under a key derived
// from the operator's passphrase with argon2id, and the Record (salt,
// argon2id parameters, nonce, sealed key) is what the volume record in
// Consul holds. The GCM additional data binds the record to its volume id
// and to every parameter in it, so a record copied to another volume, or
// one whose parameters were changed, does not open.
//
// A wrong passphrase fails GCM's authentication: Open returns
// ErrWrongPassphrase before any block is read. Nothing in this package
// puts a passphrase or key into an error or a String: errors name the
// field at fault and the rule, never its value.
//
// Rotating the passphrase reseals the same data key in a new slot
// (AddPassphrase), after which the old slot is removed (RemovePassphrase):
// the blocks on the replicas do not change, and at every moment one of
// the two passphrases opens the volume.
//
// It imports no Saddlebag package: leader (which stores the Record),
// plugin and the benchmark use it.
package volkey

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
)

// Names of what a Record uses; the only ones Version 1 knows.
const (
	Version    = 1
	CipherXTS  = "aes-256-xts-plain64-4k" // data cipher: AES-256-XTS per 4 KiB block, tweak = block number
	KDFArgon2  = "argon2id"
	WrapGCM    = "aes-256-gcm"
	KeySize    = 64 // bytes of a data key (AES-256-XTS)
	SaltSize   = 16
	NonceSize  = 12
	sealedSize = KeySize + 16 // data key plus the GCM tag
)

// Passphrase bounds.
const (
	MinPassphrase = 8
	MaxPassphrase = 1024
)

// Bounds on argon2id parameters a Record may carry. A record is read from
// Consul, so its parameters decide how much memory and time a node spends
// deriving the key: they are bounded before anything is derived.
const (
	MaxTime      = 16
	MaxMemoryKiB = 1 << 20 // 1 GiB
	MaxThreads   = 16
)

// Params are argon2id's cost parameters.
type Params struct {
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
}

// DefaultParams are RFC 9106's second recommended option (t=3, 64 MiB,
// 4 lanes): 0.55 to 1.5 s on this project's shared 2-core machine, paid
// once per CreateVolume and per NodeStageVolume (so per failover).
var DefaultParams = Params{Time: 3, MemoryKiB: 64 << 10, Threads: 4}

// Check says what is wrong with p, if anything.
func (p Params) Check() error {
	switch {
	case p.Time < 1 || p.Time > MaxTime:
		return fmt.Errorf("%w: argon2id time must be 1 to %d", ErrInvalidRecord, MaxTime)
	case p.Threads < 1 || p.Threads > MaxThreads:
		return fmt.Errorf("%w: argon2id threads must be 1 to %d", ErrInvalidRecord, MaxThreads)
	case p.MemoryKiB < 8*uint32(p.Threads) || p.MemoryKiB > MaxMemoryKiB:
		return fmt.Errorf("%w: argon2id memory must be 8 KiB per thread to %d KiB", ErrInvalidRecord, MaxMemoryKiB)
	}
	return nil
}

// Record is an encrypted volume's key record, stored in its volume record
// in Consul. Nothing in it is secret: the data key is sealed, once per
// passphrase slot (as LUKS key slots): a passphrase opens the volume if it
// opens any slot, which is what lets a passphrase be rotated without a
// moment in which neither the old nor the new one works.
type Record struct {
	Version int    `json:"version"`
	Cipher  string `json:"cipher"`
	KDF     string `json:"kdf"`
	Wrap    string `json:"wrap"`
	Slots   []Slot `json:"slots"`
}

// Slot is the data key sealed under one passphrase.
type Slot struct {
	Params
	Salt   []byte `json:"salt"`
	Nonce  []byte `json:"nonce"`
	Sealed []byte `json:"sealed_key"`
}

// MaxSlots bounds how many passphrases a volume may have at once.
const MaxSlots = 4

var (
	// ErrWrongPassphrase means the passphrase does not open the record.
	ErrWrongPassphrase = errors.New("the encryption passphrase does not open this volume's key")
	// ErrInvalidRecord means a key record is malformed or of a kind this
	// version does not know.
	ErrInvalidRecord = errors.New("invalid encryption key record")
	// ErrBadPassphrase means a passphrase breaks the rules (length, UTF-8).
	ErrBadPassphrase = errors.New("invalid encryption passphrase")
	// ErrSlots means a passphrase cannot be added (it opens the volume
	// already, or every slot is taken) or removed (it is the last one).
	ErrSlots = errors.New("passphrase slots")
)

// CheckPassphrase checks a passphrase against the rules without saying
// anything about its value.
func CheckPassphrase(passphrase string) error {
	switch {
	case len(passphrase) < MinPassphrase:
		return fmt.Errorf("%w: it must be at least %d bytes", ErrBadPassphrase, MinPassphrase)
	case len(passphrase) > MaxPassphrase:
		return fmt.Errorf("%w: it must be at most %d bytes", ErrBadPassphrase, MaxPassphrase)
	case !utf8.ValidString(passphrase):
		return fmt.Errorf("%w: it must be UTF-8 text", ErrBadPassphrase)
	}
	return nil
}

// New makes a random data key for volume and seals it under passphrase
// with params. It returns the record to store and the data key.
func New(volume, passphrase string, params Params) (Record, []byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return Record{}, nil, fmt.Errorf("data key: %w", err)
	}
	rec := Record{Version: Version, Cipher: CipherXTS, KDF: KDFArgon2, Wrap: WrapGCM}
	slot, err := rec.seal(volume, passphrase, params, key)
	if err != nil {
		clear(key)
		return Record{}, nil, err
	}
	rec.Slots = []Slot{slot}
	return rec, key, nil
}

// seal seals key for volume under passphrase, with a fresh salt and nonce.
func (r Record) seal(volume, passphrase string, params Params, key []byte) (Slot, error) {
	if err := CheckPassphrase(passphrase); err != nil {
		return Slot{}, err
	}
	if err := params.Check(); err != nil {
		return Slot{}, err
	}
	if len(key) != KeySize {
		return Slot{}, fmt.Errorf("%w: a data key is %d bytes", ErrInvalidRecord, KeySize)
	}
	s := Slot{Params: params, Salt: make([]byte, SaltSize), Nonce: make([]byte, NonceSize)}
	if _, err := rand.Read(s.Salt); err != nil {
		return Slot{}, fmt.Errorf("salt: %w", err)
	}
	if _, err := rand.Read(s.Nonce); err != nil {
		return Slot{}, fmt.Errorf("nonce: %w", err)
	}
	aead, err := s.aead(passphrase)
	if err != nil {
		return Slot{}, err
	}
	s.Sealed = aead.Seal(nil, s.Nonce, key, r.additionalData(volume, s))
	return s, nil
}

// Open checks the record and returns the data key, or ErrWrongPassphrase
// when passphrase opens no slot. The record's parameters are checked
// (bounded) before anything is derived; each slot tried costs one
// argon2id derivation.
func (r Record) Open(volume, passphrase string) ([]byte, error) {
	key, _, err := r.open(volume, passphrase)
	return key, err
}

// open returns the data key and the index of the slot passphrase opens.
func (r Record) open(volume, passphrase string) ([]byte, int, error) {
	if err := r.Check(); err != nil {
		return nil, -1, err
	}
	if err := CheckPassphrase(passphrase); err != nil {
		// A passphrase that could never have sealed a slot is wrong.
		return nil, -1, fmt.Errorf("%w (%w)", ErrWrongPassphrase, err)
	}
	for i, s := range r.Slots {
		aead, err := s.aead(passphrase)
		if err != nil {
			return nil, -1, err
		}
		if key, err := aead.Open(nil, s.Nonce, s.Sealed, r.additionalData(volume, s)); err == nil {
			return key, i, nil
		}
	}
	return nil, -1, ErrWrongPassphrase
}

// AddPassphrase returns the record with one more slot, sealing the data
// key (opened with existing) under added. The blocks do not change.
func (r Record) AddPassphrase(volume, existing, added string, params Params) (Record, error) {
	key, _, err := r.open(volume, existing)
	if err != nil {
		return Record{}, err
	}
	defer clear(key)
	if len(r.Slots) >= MaxSlots {
		return Record{}, fmt.Errorf("%w: all %d slots are taken: remove a passphrase first", ErrSlots, MaxSlots)
	}
	if k, _, err := r.open(volume, added); err == nil {
		clear(k)
		return Record{}, fmt.Errorf("%w: the new passphrase opens the volume already", ErrSlots)
	}
	s, err := r.seal(volume, added, params, key)
	if err != nil {
		return Record{}, err
	}
	out := r
	out.Slots = append(slices.Clone(r.Slots), s)
	return out, nil
}

// RemovePassphrase returns the record without the slot removed opens; the
// last slot is never removed (the data would be lost).
func (r Record) RemovePassphrase(volume, removed string) (Record, error) {
	key, i, err := r.open(volume, removed)
	if err != nil {
		return Record{}, err
	}
	clear(key)
	if len(r.Slots) == 1 {
		return Record{}, fmt.Errorf("%w: this is the volume's only passphrase: add another first", ErrSlots)
	}
	out := r
	out.Slots = slices.Delete(slices.Clone(r.Slots), i, i+1)
	return out, nil
}

// Check says what is wrong with a record's form (not whether a passphrase
// opens it).
func (r Record) Check() error {
	switch {
	case r.Version != Version:
		return fmt.Errorf("%w: version %d, this build knows %d", ErrInvalidRecord, r.Version, Version)
	case r.Cipher != CipherXTS:
		return fmt.Errorf("%w: cipher %q, this build knows %q", ErrInvalidRecord, r.Cipher, CipherXTS)
	case r.KDF != KDFArgon2:
		return fmt.Errorf("%w: kdf %q, this build knows %q", ErrInvalidRecord, r.KDF, KDFArgon2)
	case r.Wrap != WrapGCM:
		return fmt.Errorf("%w: wrap %q, this build knows %q", ErrInvalidRecord, r.Wrap, WrapGCM)
	case len(r.Slots) < 1 || len(r.Slots) > MaxSlots:
		return fmt.Errorf("%w: %d passphrase slots, want 1 to %d", ErrInvalidRecord, len(r.Slots), MaxSlots)
	}
	for i, s := range r.Slots {
		switch {
		case len(s.Salt) != SaltSize:
			return fmt.Errorf("%w: slot %d: salt of %d bytes, want %d", ErrInvalidRecord, i, len(s.Salt), SaltSize)
		case len(s.Nonce) != NonceSize:
			return fmt.Errorf("%w: slot %d: nonce of %d bytes, want %d", ErrInvalidRecord, i, len(s.Nonce), NonceSize)
		case len(s.Sealed) != sealedSize:
			return fmt.Errorf("%w: slot %d: sealed key of %d bytes, want %d", ErrInvalidRecord, i, len(s.Sealed), sealedSize)
		}
		if err := s.Params.Check(); err != nil {
			return fmt.Errorf("slot %d: %w", i, err)
		}
	}
	return nil
}

// Decode reads a record from its JSON form and checks it. Unknown fields
// are refused: a record written by a newer version is not half-read.
func Decode(b []byte) (Record, error) {
	var r Record
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrInvalidRecord, err)
	}
	if d.More() {
		return Record{}, fmt.Errorf("%w: trailing data", ErrInvalidRecord)
	}
	if err := r.Check(); err != nil {
		return Record{}, err
	}
	return r, nil
}

// aead derives the slot's wrapping key from passphrase and returns
// AES-256-GCM under it.
func (s Slot) aead(passphrase string) (cipher.AEAD, error) {
	kek := argon2.IDKey([]byte(passphrase), s.Salt, s.Time, s.MemoryKiB, s.Threads, 32)
	defer clear(kek)
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// additionalData binds a sealed key to its volume, to the record's
// algorithms and to every parameter of its slot.
func (r Record) additionalData(volume string, s Slot) []byte {
	h := sha256.New()
	h.Write([]byte("saddlebag volume data key\x00"))
	for _, v := range []string{volume, r.Cipher, r.KDF, r.Wrap} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(v)))
		h.Write(n[:])
		h.Write([]byte(v))
	}
	var p [4 + 4 + 4 + 1]byte
	binary.BigEndian.PutUint32(p[0:], uint32(r.Version))
	binary.BigEndian.PutUint32(p[4:], s.Time)
	binary.BigEndian.PutUint32(p[8:], s.MemoryKiB)
	p[12] = s.Threads
	h.Write(p[:])
	h.Write(s.Salt)
	return h.Sum(nil)
}
