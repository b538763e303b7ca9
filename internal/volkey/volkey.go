// Package volkey makes and opens the data keys of encrypted volumes
// (issue #11, "at rest").
//
// Each encrypted volume has a random 64-byte data key (AES-256-XTS: two
// AES-256 keys), which the primary uses to encrypt every block before it
// is replicated (replication.EncryptedDevice). The data key is never
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
// Rotating the passphrase reseals the same data key (Rewrap): the blocks
// on the replicas do not change.
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
// 4 lanes): about a tenth of a second on one core of a current server,
// once per CreateVolume and per NodeStageVolume.
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
// in Consul. Nothing in it is secret: the data key is sealed.
type Record struct {
	Version int    `json:"version"`
	Cipher  string `json:"cipher"`
	KDF     string `json:"kdf"`
	Params
	Salt   []byte `json:"salt"`
	Wrap   string `json:"wrap"`
	Nonce  []byte `json:"nonce"`
	Sealed []byte `json:"sealed_key"`
}

var (
	// ErrWrongPassphrase means the passphrase does not open the record.
	ErrWrongPassphrase = errors.New("the encryption passphrase does not open this volume's key")
	// ErrInvalidRecord means a key record is malformed or of a kind this
	// version does not know.
	ErrInvalidRecord = errors.New("invalid encryption key record")
	// ErrBadPassphrase means a passphrase breaks the rules (length, UTF-8).
	ErrBadPassphrase = errors.New("invalid encryption passphrase")
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
	rec, err := seal(volume, passphrase, params, key)
	if err != nil {
		clear(key)
		return Record{}, nil, err
	}
	return rec, key, nil
}

// seal seals key for volume under passphrase, with a fresh salt and nonce.
func seal(volume, passphrase string, params Params, key []byte) (Record, error) {
	if err := CheckPassphrase(passphrase); err != nil {
		return Record{}, err
	}
	if err := params.Check(); err != nil {
		return Record{}, err
	}
	if len(key) != KeySize {
		return Record{}, fmt.Errorf("%w: a data key is %d bytes", ErrInvalidRecord, KeySize)
	}
	rec := Record{Version: Version, Cipher: CipherXTS, KDF: KDFArgon2, Params: params, Wrap: WrapGCM,
		Salt: make([]byte, SaltSize), Nonce: make([]byte, NonceSize)}
	if _, err := rand.Read(rec.Salt); err != nil {
		return Record{}, fmt.Errorf("salt: %w", err)
	}
	if _, err := rand.Read(rec.Nonce); err != nil {
		return Record{}, fmt.Errorf("nonce: %w", err)
	}
	aead, err := rec.aead(passphrase)
	if err != nil {
		return Record{}, err
	}
	rec.Sealed = aead.Seal(nil, rec.Nonce, key, rec.additionalData(volume))
	return rec, nil
}

// Open checks the record and returns the data key it seals, or
// ErrWrongPassphrase. The record's parameters are checked (bounded)
// before anything is derived.
func (r Record) Open(volume, passphrase string) ([]byte, error) {
	if err := r.Check(); err != nil {
		return nil, err
	}
	if err := CheckPassphrase(passphrase); err != nil {
		// A passphrase that could never have sealed a record is wrong.
		return nil, fmt.Errorf("%w (%w)", ErrWrongPassphrase, err)
	}
	aead, err := r.aead(passphrase)
	if err != nil {
		return nil, err
	}
	key, err := aead.Open(nil, r.Nonce, r.Sealed, r.additionalData(volume))
	if err != nil {
		return nil, ErrWrongPassphrase
	}
	return key, nil
}

// Rewrap seals the same data key under a new passphrase (fresh salt and
// nonce, params): passphrase rotation without touching a block.
func (r Record) Rewrap(volume, oldPassphrase, newPassphrase string, params Params) (Record, error) {
	key, err := r.Open(volume, oldPassphrase)
	if err != nil {
		return Record{}, err
	}
	defer clear(key)
	return seal(volume, newPassphrase, params, key)
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
	case len(r.Salt) != SaltSize:
		return fmt.Errorf("%w: salt of %d bytes, want %d", ErrInvalidRecord, len(r.Salt), SaltSize)
	case len(r.Nonce) != NonceSize:
		return fmt.Errorf("%w: nonce of %d bytes, want %d", ErrInvalidRecord, len(r.Nonce), NonceSize)
	case len(r.Sealed) != sealedSize:
		return fmt.Errorf("%w: sealed key of %d bytes, want %d", ErrInvalidRecord, len(r.Sealed), sealedSize)
	}
	return r.Params.Check()
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

// aead derives the wrapping key from passphrase and returns AES-256-GCM
// under it.
func (r Record) aead(passphrase string) (cipher.AEAD, error) {
	kek := argon2.IDKey([]byte(passphrase), r.Salt, r.Time, r.MemoryKiB, r.Threads, 32)
	defer clear(kek)
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// additionalData binds the sealed key to its volume and to every
// parameter of the record.
func (r Record) additionalData(volume string) []byte {
	h := sha256.New()
	h.Write([]byte("saddlebag volume data key\x00"))
	for _, s := range []string{volume, r.Cipher, r.KDF, r.Wrap} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	var p [4 + 4 + 4 + 1]byte
	binary.BigEndian.PutUint32(p[0:], uint32(r.Version))
	binary.BigEndian.PutUint32(p[4:], r.Time)
	binary.BigEndian.PutUint32(p[8:], r.MemoryKiB)
	p[12] = r.Threads
	h.Write(p[:])
	h.Write(r.Salt)
	return h.Sum(nil)
}
