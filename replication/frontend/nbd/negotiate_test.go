package nbd

import (
	"encoding/binary"
	"testing"

	"github.com/shoenig/test/must"
)

func TestNBDNegotiation(t *testing.T) {
	const devSize = 1 << 20
	const name = "vol0"
	wantFlags := nbdFlagHasFlags | nbdFlagSendFlush | nbdFlagSendFUA | nbdFlagSendTrim |
		nbdFlagSendWriteZeroes | nbdFlagCanMultiConn

	// checkTransmission proves the stream is in the transmission phase and
	// aligned: a one-sector read succeeds.
	checkTransmission := func(c *nbdTestClient) {
		c.t.Helper()
		c.request(0, nbdCmdRead, 7, 0, 512, nil)
		c.expectReply(7, 0)
		c.read(512)
	}
	goOK := func(c *nbdTestClient) {
		c.t.Helper()
		e := c.info(nbdOptGo, "")
		must.EqOp(c.t, uint64(devSize), e.size)
		checkTransmission(c)
	}

	cases := []struct {
		name    string
		run     func(c *nbdTestClient)
		wantLog string // an error the server must log
	}{
		{
			name: "go with default export",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				e := c.info(nbdOptGo, "")
				must.EqOp(c.t, uint64(devSize), e.size)
				must.EqOp(c.t, wantFlags, e.flags)
				must.True(c.t, e.sawBlockInfo)
				must.EqOp(c.t, uint32(512), e.minBS)
				must.EqOp(c.t, uint32(4096), e.preferredBS)
				must.EqOp(c.t, uint32(32<<20), e.maxBS)
				checkTransmission(c)
			},
		},
		{
			name: "go with named export without no_zeroes",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle))
				e := c.info(nbdOptGo, name)
				must.EqOp(c.t, uint64(devSize), e.size)
				checkTransmission(c)
			},
		},
		{
			name: "info then go",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				e := c.info(nbdOptInfo, name)
				must.EqOp(c.t, uint64(devSize), e.size)
				goOK(c)
			},
		},
		{
			name: "unknown option is refused and negotiation continues",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.expectOptError(4242, []byte("whatever"), nbdRepErrUnsup)
				goOK(c)
			},
		},
		{
			name: "unsupported extensions are refused so clients fall back",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.expectOptError(nbdOptStartTLS, nil, nbdRepErrPolicy)
				c.expectOptError(nbdOptStructuredReply, nil, nbdRepErrUnsup)
				c.expectOptError(nbdOptListMetaContext, nbdGoData(""), nbdRepErrUnsup)
				c.expectOptError(nbdOptSetMetaContext, nbdGoData(""), nbdRepErrUnsup)
				c.expectOptError(nbdOptExtendedHeaders, nil, nbdRepErrUnsup)
				c.expectOptError(nbdOptPeekExport, nil, nbdRepErrUnsup)
				goOK(c)
			},
		},
		{
			name: "unknown export name with go",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.expectOptError(nbdOptGo, nbdGoData("nope"), nbdRepErrUnknown)
				c.expectOptError(nbdOptInfo, nbdGoData("nope"), nbdRepErrUnknown)
				goOK(c)
			},
		},
		{
			name: "malformed go",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.expectOptError(nbdOptGo, []byte{0, 0, 0, 9, 'x'}, nbdRepErrInvalid)
				c.expectOptError(nbdOptGo, append(nbdGoData(""), 0), nbdRepErrInvalid)
				goOK(c)
			},
		},
		{
			name: "list",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.send(nbdOptBytes(nbdOptList, nil))
				r := c.readOptReply()
				must.EqOp(c.t, nbdRepServer, r.typ)
				must.Eq(c.t, append(binary.BigEndian.AppendUint32(nil, uint32(len(name))), name...), r.data)
				r = c.readOptReply()
				must.EqOp(c.t, nbdRepAck, r.typ)
				c.expectOptError(nbdOptList, []byte("x"), nbdRepErrInvalid)
				goOK(c)
			},
		},
		{
			name: "abort",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.send(nbdOptBytes(nbdOptAbort, nil))
				r := c.readOptReply()
				must.EqOp(c.t, nbdRepAck, r.typ)
				c.expectClosed()
			},
		},
		{
			name: "export name pads with zeroes unless no_zeroes",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle))
				c.send(nbdOptBytes(nbdOptExportName, []byte(name)))
				b := c.read(8 + 2 + 124)
				must.EqOp(c.t, uint64(devSize), binary.BigEndian.Uint64(b))
				must.EqOp(c.t, wantFlags, binary.BigEndian.Uint16(b[8:]))
				must.Eq(c.t, make([]byte, 124), b[10:])
				checkTransmission(c)
			},
		},
		{
			name: "export name with no_zeroes",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.send(nbdOptBytes(nbdOptExportName, nil))
				b := c.read(8 + 2)
				must.EqOp(c.t, uint64(devSize), binary.BigEndian.Uint64(b))
				checkTransmission(c)
			},
		},
		{
			name: "unknown export name with export_name closes",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				c.send(nbdOptBytes(nbdOptExportName, []byte("nope")))
				c.expectClosed()
			},
			wantLog: "unknown export name",
		},
		{
			name: "bad option magic closes",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				b := nbdOptBytes(nbdOptGo, nbdGoData(""))
				b[0] ^= 0xff
				c.send(b)
				c.expectClosed()
			},
			wantLog: "bad option magic",
		},
		{
			name: "oversize option length closes",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | nbdFlagCNoZeroes))
				b := nbdOptBytes(nbdOptGo, nil)
				binary.BigEndian.PutUint32(b[12:], 64<<10+1)
				c.send(b)
				c.expectClosed()
			},
			wantLog: "exceeds",
		},
		{
			name: "unknown client flags close",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(nbdFlagCFixedNewstyle | 1<<7))
				c.expectClosed()
			},
			wantLog: "unknown client flags",
		},
		{
			name: "client without fixed newstyle is refused",
			run: func(c *nbdTestClient) {
				c.send(nbdClientFlagsBytes(0))
				c.expectClosed()
			},
			wantLog: "fixed newstyle",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev := nbdNewMemDevice(devSize)
			srv := nbdStartServer(t, dev, name)
			c := nbdDial(t, srv.sock)
			tc.run(c)
			if tc.wantLog != "" {
				nbdWaitLog(t, srv.logs, tc.wantLog)
				must.StrContains(t, srv.logs.String(), "[ERROR]")
			}
		})
	}
}
