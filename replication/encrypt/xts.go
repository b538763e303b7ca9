package encrypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
)

// xtsCipher is AES-XTS (IEEE 1619) over whole blockSize sectors, the
// sector number as tweak, producing exactly what golang.org/x/crypto/xts
// produces (TestXTSMatchesXCrypto checks it bit for bit) but about five
// times faster: x/crypto/xts XORs and doubles the tweak one byte at a
// time for every 16-byte AES block, which cost more than AES itself and
// more than the network (encrypted writes ran at 40% of plain ones). Here
// the tweaks of a sector are computed with 64-bit operations and XORed
// in with crypto/subtle.XORBytes, and the tweak doubling is constant
// time.
type xtsCipher struct {
	k1, k2 cipher.Block
}

// newXTS takes a 64-byte key: AES-256 for the data (first half) and for
// the tweak (second half), as x/crypto/xts splits it.
func newXTS(key []byte) (*xtsCipher, error) {
	k1, err := aes.NewCipher(key[:len(key)/2])
	if err != nil {
		return nil, err
	}
	k2, err := aes.NewCipher(key[len(key)/2:])
	if err != nil {
		return nil, err
	}
	return &xtsCipher{k1: k1, k2: k2}, nil
}

// tweaks fills tw (BlockSize bytes) with the tweak of every 16-byte
// block of sector: T_0 = AES(k2, sector as little-endian 128 bits),
// T_{j+1} = T_j·α in GF(2^128).
func (x *xtsCipher) tweaks(tw *[blockSize]byte, sector uint64) {
	var t [16]byte
	binary.LittleEndian.PutUint64(t[:8], sector)
	x.k2.Encrypt(t[:], t[:])
	lo, hi := binary.LittleEndian.Uint64(t[:8]), binary.LittleEndian.Uint64(t[8:])
	for j := 0; j < blockSize; j += 16 {
		binary.LittleEndian.PutUint64(tw[j:], lo)
		binary.LittleEndian.PutUint64(tw[j+8:], hi)
		carry := hi >> 63
		hi = hi<<1 | lo>>63
		lo = lo<<1 ^ (0x87 & -carry)
	}
}

// encryptSector encrypts one BlockSize sector in place.
func (x *xtsCipher) encryptSector(b []byte, sector uint64) {
	var tw [blockSize]byte
	x.tweaks(&tw, sector)
	b = b[:blockSize]
	subtle.XORBytes(b, b, tw[:])
	for j := 0; j < blockSize; j += 16 {
		x.k1.Encrypt(b[j:j+16], b[j:j+16])
	}
	subtle.XORBytes(b, b, tw[:])
}

// decryptSector decrypts one BlockSize sector in place.
func (x *xtsCipher) decryptSector(b []byte, sector uint64) {
	var tw [blockSize]byte
	x.tweaks(&tw, sector)
	b = b[:blockSize]
	subtle.XORBytes(b, b, tw[:])
	for j := 0; j < blockSize; j += 16 {
		x.k1.Decrypt(b[j:j+16], b[j:j+16])
	}
	subtle.XORBytes(b, b, tw[:])
}
