package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"testing"

	"github.com/shoenig/test/must"
)

func TestFrameRoundTrip(t *testing.T) {
	t.Parallel()
	in := Frame{Type: FrameWrite, Flags: FlagFUA, Epoch: 7, ID: 42, Offset: 8192, Payload: bytes.Repeat([]byte{9}, 4096)}
	b := AppendFrame(nil, &in)
	must.Eq(t, HeaderSize+4096, len(b))
	out, err := ReadFrame(bytes.NewReader(b), nil)
	must.NoError(t, err)
	must.Eq(t, in, out)
}

func TestReadFrameRejects(t *testing.T) {
	t.Parallel()
	good := AppendFrame(nil, &Frame{Type: FrameWrite, Epoch: 1, ID: 1, Payload: []byte("data")})
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := []struct {
		name string
		in   []byte
		want error
		msg  string
	}{
		{"bad magic", mutate(func(b []byte) []byte { b[0] ^= 0xff; return b }), ErrBadFrame, "magic"},
		{"bad version", mutate(func(b []byte) []byte {
			b[4] = 9
			binary.BigEndian.PutUint32(b[52:], crc32.Checksum(b[:52], castagnoli))
			return b
		}), ErrBadFrame, "version"},
		{"flipped payload bit", mutate(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ErrBadFrame, "payload checksum"},
		{"flipped header bit", mutate(func(b []byte) []byte { b[30] ^= 1; return b }), ErrBadFrame, "header checksum"},
		{"oversize write", mutate(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[44:], MaxIOSize+1)
			binary.BigEndian.PutUint32(b[52:], crc32.Checksum(b[:52], castagnoli))
			return b
		}), ErrBadFrame, "exceeds"},
		{"oversize control payload", AppendFrame(nil, &Frame{Type: FrameOpen, Payload: make([]byte, MaxControlPayload+1)}), ErrBadFrame, "exceeds"},
		{"oversize read", AppendFrame(nil, &Frame{Type: FrameRead, Length: MaxIOSize + 1}), ErrBadFrame, "read of"},
		{"truncated payload", good[:len(good)-1], io.ErrUnexpectedEOF, "payload"},
		{"truncated header", good[:10], io.ErrUnexpectedEOF, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, err := ReadFrame(bytes.NewReader(c.in), nil)
			must.True(t, errors.Is(err, c.want), must.Sprintf("err = %v, want %v", err, c.want))
			must.StrContains(t, err.Error(), c.msg)
		})
	}
	_, err := ReadFrame(bytes.NewReader(nil), nil)
	must.ErrorIs(t, err, io.EOF)
}

// FuzzReadFrame checks that no input makes the decoder panic, allocate past
// the bounds or accept a frame that does not re-encode to the same bytes.
func FuzzReadFrame(f *testing.F) {
	f.Add(AppendFrame(nil, &Frame{Type: FrameWrite, Epoch: 3, ID: 1, Offset: 4096, Payload: []byte("abc")}))
	f.Add(AppendFrame(nil, &Frame{Type: FrameRead, Epoch: 3, ID: 2, Length: 4096}))
	f.Add(AppendFrame(nil, &Frame{Type: FrameOpen | ReplyBit, Status: StatusStaleEpoch, Payload: []byte("stale")}))
	f.Add([]byte("SBG1 garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := ReadFrame(bytes.NewReader(data), nil)
		if err != nil {
			return
		}
		if len(fr.Payload) > maxPayload {
			t.Fatalf("accepted payload of %d bytes", len(fr.Payload))
		}
		again := AppendFrame(nil, &fr)
		if !bytes.Equal(again, data[:len(again)]) {
			t.Fatalf("accepted frame does not re-encode to its input")
		}
	})
}
