package export_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/transport"
)

// startNBD serves cfg to NBD clients on a loopback TCP port and returns
// the server and the address.
func startNBD(t testing.TB, cfg export.Config) (*export.Server, string) {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = exporttest.TestLogger(t)
	}
	s, err := export.New(cfg)
	if err != nil {
		t.Fatalf("export.New: %v", err)
	}
	u, err := export.ParseNBDListenURL("nbd://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := transport.ListenURL(context.Background(), u, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServeNBD(context.Background(), l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil && !errors.Is(err, export.ErrServerClosed) {
			t.Errorf("ServeNBD: %v", err)
		}
	})
	return s, l.Addr().String()
}

// nbdClient is a raw NBD client: one goroutine may send while another
// receives.
type nbdClient struct {
	t          testing.TB
	c          net.Conn
	info       nbd.ExportInfo
	structured bool
	rmu        sync.Mutex
}

func dialNBD(t testing.TB, addr string, o nbd.ClientOptions) *nbdClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	info, structured, err := nbd.ClientGo(c, o)
	if err != nil {
		t.Fatalf("NBD handshake: %v", err)
	}
	return &nbdClient{t: t, c: c, info: info, structured: structured}
}

// sendAsync writes b (whole requests) from a goroutine while the test
// receives; wait reports the write's error. The goroutine is waited for
// by wait or, if the test ends first, by a cleanup that closes the
// connection.
func (c *nbdClient) sendAsync(b []byte) (wait func()) {
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		_, err = c.c.Write(b)
	}()
	c.t.Cleanup(func() { c.c.Close(); <-done })
	return func() {
		c.t.Helper()
		<-done
		if err != nil {
			c.t.Fatalf("send: %v", err)
		}
	}
}

func (c *nbdClient) send(r nbd.Request, payload []byte) {
	c.t.Helper()
	if _, err := c.c.Write(append(nbd.AppendRequest(nil, r), payload...)); err != nil {
		c.t.Fatalf("send %v: %v", r.Type, err)
	}
}

type nbdReply struct {
	cookie uint64
	errno  nbd.Errno
	msg    string
	data   []byte
}

// recv reads one reply; lengths says how many bytes a READ cookie
// expects (simple replies carry no length).
func (c *nbdClient) recv(lengths map[uint64]uint32) (nbdReply, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	var h [nbd.StructuredReplyLen]byte
	if _, err := io.ReadFull(c.c, h[:4]); err != nil {
		return nbdReply{}, err
	}
	n := nbd.SimpleReplyLen
	if binary.BigEndian.Uint32(h[:4]) == nbd.StructuredReplyMagic {
		n = nbd.StructuredReplyLen
	}
	if _, err := io.ReadFull(c.c, h[4:n]); err != nil {
		return nbdReply{}, err
	}
	r, _, err := nbd.ParseReply(h[:n])
	if err != nil {
		return nbdReply{}, err
	}
	out := nbdReply{cookie: r.Cookie, errno: r.Errno}
	if !r.Structured {
		if r.Errno == 0 && lengths[r.Cookie] > 0 {
			out.data = make([]byte, lengths[r.Cookie])
			_, err = io.ReadFull(c.c, out.data)
		}
		return out, err
	}
	if r.Flags&nbd.ChunkFlagDone == 0 {
		return out, errors.New("chunk without DONE: the exporter sends one chunk per reply")
	}
	p := make([]byte, r.Length)
	if _, err := io.ReadFull(c.c, p); err != nil {
		return out, err
	}
	switch r.Type {
	case nbd.ChunkError:
		out.errno, out.msg, err = nbd.ParseErrorChunk(p)
	case nbd.ChunkOffsetData:
		out.data = p[8:]
	case nbd.ChunkNone:
	default:
		err = errors.New("unexpected chunk type")
	}
	return out, err
}

// do sends one request and waits for its reply.
func (c *nbdClient) do(r nbd.Request, payload []byte) nbdReply {
	c.t.Helper()
	c.send(r, payload)
	rep, err := c.recv(map[uint64]uint32{r.Cookie: r.Length * uint32(b2i(r.Type == nbd.CmdRead))})
	if err != nil {
		c.t.Fatalf("%v: %v", r.Type, err)
	}
	if rep.cookie != r.Cookie {
		c.t.Fatalf("reply cookie %d, want %d", rep.cookie, r.Cookie)
	}
	return rep
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (c *nbdClient) expectClosed() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := io.Copy(io.Discard, c.c); err != nil {
		c.t.Fatalf("connection not closed by the exporter (%d bytes, %v)", n, err)
	}
}

func req(t nbd.Cmd, cookie, off uint64, n uint32) nbd.Request {
	return nbd.Request{Type: t, Cookie: cookie, Offset: off, Length: n}
}

// TestNBDPipelined: many requests in flight on one connection, answered
// by cookie, for structured and simple replies; the data is in the file.
func TestNBDPipelined(t *testing.T) {
	path := exporttest.File(t, testSize)
	_, addr := startNBD(t, config(path))
	for _, structured := range []bool{true, false} {
		c := dialNBD(t, addr, nbd.ClientOptions{Export: "disk", Structured: structured, BlockSize: true})
		if c.structured != structured || c.info.Size != testSize || c.info.MinBlock == 0 || c.info.MaxBlock < 65536 {
			t.Fatalf("negotiated %+v structured=%v", c.info, c.structured)
		}
		want := nbd.FlagHasFlags | nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendWriteZeroes | nbd.FlagCanMultiConn | nbd.FlagSendCache
		if c.info.Flags&want != want || c.info.Flags&nbd.FlagReadOnly != 0 {
			t.Fatalf("flags %v, want at least %v", c.info.Flags, want)
		}
		const n = 64
		data := pattern(n*bs, uint64(b2i(structured))+1)
		var out []byte
		for i := range n {
			r := req(nbd.CmdWrite, uint64(i+1), uint64(i)*bs, bs)
			if i%5 == 0 {
				r.Flags = nbd.CmdFlagFUA
			}
			out = append(nbd.AppendRequest(out, r), data[i*bs:(i+1)*bs]...)
		}
		wait := c.sendAsync(out) // the test receives meanwhile
		seen := map[uint64]bool{}
		for range n {
			r, err := c.recv(nil)
			if err != nil || r.errno != 0 || seen[r.cookie] {
				t.Fatalf("write reply %+v, %v", r, err)
			}
			seen[r.cookie] = true
		}
		wait()
		if got := fileAt(t, path, 0, n*bs); !bytes.Equal(got, data) {
			t.Fatal("file content differs from what was written")
		}
		lengths := map[uint64]uint32{}
		for i := range n {
			lengths[uint64(1000+i)] = 2 * bs
		}
		out = out[:0]
		for i := range n {
			out = nbd.AppendRequest(out, req(nbd.CmdRead, uint64(1000+i), uint64(i%(n-1))*bs, 2*bs))
		}
		wait = c.sendAsync(out)
		for range n {
			r, err := c.recv(lengths)
			if err != nil || r.errno != 0 {
				t.Fatalf("read reply %+v, %v", r, err)
			}
			i := int(r.cookie - 1000)
			if off := i % (n - 1) * bs; !bytes.Equal(r.data, data[off:off+2*bs]) {
				t.Fatalf("read %d returned other data", i)
			}
		}
		wait()
		if r := c.do(req(nbd.CmdFlush, 7, 0, 0), nil); r.errno != 0 {
			t.Fatalf("flush: %v", r.errno)
		}
		if r := c.do(req(nbd.CmdCache, 8, 0, 1<<20), nil); r.errno != 0 {
			t.Fatalf("cache: %v", r.errno)
		}
		z := req(nbd.CmdWriteZeroes, 9, 4*bs, 2*bs)
		z.Flags = nbd.CmdFlagNoHole
		if r := c.do(z, nil); r.errno != 0 || !isZero(fileAt(t, path, 4*bs, 2*bs)) {
			t.Fatalf("write zeroes: %v", r.errno)
		}
		if c.info.Flags&nbd.FlagSendTrim != 0 {
			if r := c.do(req(nbd.CmdTrim, 10, 8*bs, 2*bs), nil); r.errno != 0 || !isZero(fileAt(t, path, 8*bs, 2*bs)) {
				t.Fatalf("trim: %v", r.errno)
			}
		}
		if c.info.Flags&nbd.FlagSendFastZero != 0 {
			fz := req(nbd.CmdWriteZeroes, 11, 12*bs, bs)
			fz.Flags = nbd.CmdFlagFastZero
			if r := c.do(fz, nil); r.errno != 0 || !isZero(fileAt(t, path, 12*bs, bs)) {
				t.Fatalf("fast zero: %v", r.errno)
			}
		}
		c.send(req(nbd.CmdDisc, 12, 0, 0), nil)
		c.expectClosed()
	}
}

// TestNBDRequestErrors: every per-request error is answered and the
// connection goes on; with structured replies errors are error chunks
// with a message.
func TestNBDRequestErrors(t *testing.T) {
	path := exporttest.File(t, testSize)
	_, addr := startNBD(t, config(path))
	for _, structured := range []bool{true, false} {
		c := dialNBD(t, addr, nbd.ClientOptions{Export: "disk", Structured: structured, BlockSize: true})
		lbs := uint64(c.info.MinBlock)
		fz := req(nbd.CmdWriteZeroes, 1, 0, bs)
		fz.Flags = nbd.CmdFlagFastZero | nbd.CmdFlagNoHole
		df := req(nbd.CmdRead, 1, 0, bs)
		df.Flags = nbd.CmdFlagDF
		for _, tc := range []struct {
			name    string
			r       nbd.Request
			payload []byte
			want    nbd.Errno
		}{
			{"unaligned read (agreed)", req(nbd.CmdRead, 1, lbs/2, uint32(lbs)), nil, nbd.EINVAL},
			{"unaligned write (agreed)", req(nbd.CmdWrite, 1, 0, uint32(lbs)+1), make([]byte, lbs+1), nbd.EINVAL},
			{"read over max", req(nbd.CmdRead, 1, 0, c.info.MaxBlock*2), nil, nbd.EINVAL},
			{"write over max", req(nbd.CmdWrite, 1, 0, c.info.MaxBlock*2), make([]byte, c.info.MaxBlock*2), nbd.EINVAL},
			{"read past end", req(nbd.CmdRead, 1, testSize, bs), nil, nbd.EINVAL},
			{"read overflowing", req(nbd.CmdRead, 1, ^uint64(0)-bs+1, 2*bs), nil, nbd.EINVAL},
			{"write past end", req(nbd.CmdWrite, 1, testSize-bs, 2*bs), make([]byte, 2*bs), nbd.ENOSPC},
			{"write zeroes past end", req(nbd.CmdWriteZeroes, 1, testSize, bs), nil, nbd.ENOSPC},
			{"flush with a range", req(nbd.CmdFlush, 1, 0, bs), nil, nbd.EINVAL},
			{"block status", req(nbd.CmdBlockStatus, 1, 0, bs), nil, nbd.EINVAL},
			{"unknown command", req(200, 1, 0, 0), nil, nbd.EINVAL},
			{"DF without SEND_DF", df, nil, nbd.EINVAL},
			{"write with an unknown flag", nbd.Request{Type: nbd.CmdWrite, Flags: 1 << 9, Cookie: 1, Length: bs}, make([]byte, bs), nbd.EINVAL},
			{"fast zero with NO_HOLE", fz, nil, nbd.ENOTSUP},
		} {
			r := c.do(tc.r, tc.payload)
			if r.errno != tc.want {
				t.Errorf("structured=%v %s: %v, want %v", structured, tc.name, r.errno, tc.want)
			}
			if structured && r.msg == "" {
				t.Errorf("%s: error chunk without a message", tc.name)
			}
		}
		// Still usable.
		data := pattern(bs, 3)
		if r := c.do(req(nbd.CmdWrite, 2, 0, bs), data); r.errno != 0 {
			t.Fatalf("write after errors: %v", r.errno)
		}
		if r := c.do(req(nbd.CmdRead, 3, 0, bs), nil); r.errno != 0 || !bytes.Equal(r.data, data) {
			t.Fatalf("read after errors: %v", r.errno)
		}
	}
	if !isZero(fileAt(t, path, bs, testSize-bs)) {
		t.Error("a refused request reached the file")
	}
}

// TestNBDUnalignedRMW: a client that did not agree to the block size
// constraints is served byte-granular; concurrent unaligned writes that
// share blocks keep each other's bytes.
func TestNBDUnalignedRMW(t *testing.T) {
	path := exporttest.File(t, testSize)
	_, addr := startNBD(t, config(path))
	c := dialNBD(t, addr, nbd.ClientOptions{Export: "disk", Structured: true})
	if c.info.MinBlock != 0 {
		t.Fatal("block sizes sent unasked")
	}
	want := make([]byte, 4*bs)
	const n = 40
	var out []byte
	for i := range n { // 40 writes of 97 bytes, 3 bytes apart: many share a block
		r := req(nbd.CmdWrite, uint64(i+1), uint64(5+i*100), 97)
		if i%7 == 0 {
			r.Flags = nbd.CmdFlagFUA
		}
		out = append(nbd.AppendRequest(out, r), pattern(97, uint64(i))...)
	}
	wait := c.sendAsync(out)
	for i := range n {
		copy(want[5+i*100:], pattern(97, uint64(i)))
	}
	for range n {
		if r, err := c.recv(nil); err != nil || r.errno != 0 {
			t.Fatalf("unaligned write: %+v %v", r, err)
		}
	}
	wait()
	if got := fileAt(t, path, 0, 4*bs); !bytes.Equal(got, want) {
		t.Fatal("concurrent unaligned writes lost bytes")
	}
	// An unaligned read across blocks, and an unaligned write-zeroes
	// whose edges are partial blocks with whole blocks between.
	if r := c.do(req(nbd.CmdRead, 100, 333, 3000), nil); r.errno != 0 || !bytes.Equal(r.data, want[333:3333]) {
		t.Fatalf("unaligned read: %v", r.errno)
	}
	if r := c.do(req(nbd.CmdWriteZeroes, 101, 1000, 2*bs+10), nil); r.errno != 0 {
		t.Fatalf("unaligned write zeroes: %v", r.errno)
	}
	clear(want[1000 : 1000+2*bs+10])
	if got := fileAt(t, path, 0, 4*bs); !bytes.Equal(got, want) {
		t.Fatal("unaligned write zeroes: wrong content")
	}
	if r := c.do(req(nbd.CmdWriteZeroes, 102, 17, 20), nil); r.errno != 0 {
		t.Fatalf("write zeroes inside one block: %v", r.errno)
	}
	clear(want[17:37])
	if got := fileAt(t, path, 0, 4*bs); !bytes.Equal(got, want) {
		t.Fatal("write zeroes inside one block: wrong content")
	}
	// An unaligned trim covering no whole block is a successful no-op.
	if c.info.Flags&nbd.FlagSendTrim != 0 {
		if r := c.do(req(nbd.CmdTrim, 103, 3000, 100), nil); r.errno != 0 {
			t.Fatalf("small trim: %v", r.errno)
		}
		if got := fileAt(t, path, 0, 4*bs); !bytes.Equal(got, want) {
			t.Fatal("a trim smaller than a block changed data")
		}
	}
}

// TestNBDReadOnly: ro access and ro exports get READ_ONLY and EPERM.
func TestNBDReadOnly(t *testing.T) {
	path := exporttest.File(t, testSize)
	roPath := exporttest.File(t, 1<<20)
	cfg := config(path)
	cfg.Exports = append(cfg.Exports, export.ExportConfig{Name: "ro", Path: roPath, ReadOnly: true})
	cfg.Access = export.ACL{Rules: []export.Rule{mustRule("127.0.0.1/32=ro")}}
	_, addr := startNBD(t, cfg)
	for _, name := range []string{"disk", "ro"} {
		c := dialNBD(t, addr, nbd.ClientOptions{Export: name, Structured: true, BlockSize: true})
		if c.info.Flags&nbd.FlagReadOnly == 0 || c.info.Flags&(nbd.FlagSendTrim|nbd.FlagSendWriteZeroes|nbd.FlagSendFUA) != 0 {
			t.Fatalf("%s: flags %v", name, c.info.Flags)
		}
		for _, r := range []nbd.Request{req(nbd.CmdWrite, 1, 0, bs), req(nbd.CmdTrim, 2, 0, bs), req(nbd.CmdWriteZeroes, 3, 0, bs)} {
			var p []byte
			if r.Type == nbd.CmdWrite {
				p = pattern(bs, 1)
			}
			if rep := c.do(r, p); rep.errno != nbd.EPERM {
				t.Errorf("%s %v: %v, want EPERM", name, r.Type, rep.errno)
			}
		}
		if rep := c.do(req(nbd.CmdRead, 4, 0, bs), nil); rep.errno != 0 {
			t.Errorf("%s read: %v", name, rep.errno)
		}
	}
	if !isZero(fileAt(t, path, 0, bs)) {
		t.Fatal("a refused write reached the file")
	}
}

// TestNBDAccessDenied: a peer not on the list is closed at accept.
func TestNBDAccessDenied(t *testing.T) {
	cfg := config(exporttest.File(t, 1<<20))
	cfg.Access = export.ACL{Rules: []export.Rule{mustRule("10.0.0.0/8=rw")}}
	_, addr := startNBD(t, cfg)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := io.Copy(io.Discard, c); n != 0 || err != nil {
		t.Fatalf("refused peer got %d bytes (%v), want a close without greeting", n, err)
	}
}

// TestNBDProtocolViolation: a bad magic or an oversized WRITE payload
// closes that connection; another one goes on.
func TestNBDProtocolViolation(t *testing.T) {
	path := exporttest.File(t, testSize)
	_, addr := startNBD(t, config(path))
	other := dialNBD(t, addr, nbd.ClientOptions{Export: "disk", Structured: true, BlockSize: true})
	for _, bad := range [][]byte{
		append([]byte{0xde, 0xad}, make([]byte, nbd.RequestLen-2)...),
		nbd.AppendRequest(nil, req(nbd.CmdWrite, 1, 0, nbd.MaxPayload+1)),
	} {
		c := dialNBD(t, addr, nbd.ClientOptions{Export: "disk"})
		if _, err := c.c.Write(bad); err != nil {
			t.Fatal(err)
		}
		c.expectClosed()
	}
	if r := other.do(req(nbd.CmdRead, 1, 0, bs), nil); r.errno != 0 {
		t.Fatalf("other connection: %v", r.errno)
	}
}

// TestNBDStorageEIO: a storage error is an EIO reply; the connection
// goes on.
func TestNBDStorageEIO(t *testing.T) {
	path := exporttest.File(t, 1<<20)
	faults := &backend.Faults{EIO: []backend.EIORule{{Op: backend.OpWrite, Off: 256 << 10, Len: bs}}}
	cfg := config(path)
	cfg.Exports[0].Faults = faults
	_, addr := startNBD(t, cfg)
	c := dialNBD(t, addr, nbd.ClientOptions{Export: "disk", Structured: true, BlockSize: true})
	data := pattern(2*bs, 9)
	if r := c.do(req(nbd.CmdWrite, 1, 256<<10-bs, 2*bs), data); r.errno != nbd.EIO || r.msg == "" {
		t.Fatalf("write over the faulty range: %v %q, want EIO", r.errno, r.msg)
	}
	if r := c.do(req(nbd.CmdWrite, 2, 0, 2*bs), data); r.errno != 0 {
		t.Fatalf("write elsewhere: %v", r.errno)
	}
	if r := c.do(req(nbd.CmdRead, 3, 0, 2*bs), nil); r.errno != 0 || !bytes.Equal(r.data, data) {
		t.Fatalf("read back: %v", r.errno)
	}
}

// TestNBDShutdown: Shutdown answers what is in flight, closes NBD
// connections and leaves no goroutine behind.
func TestNBDShutdown(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := config(exporttest.File(t, testSize))
	cfg.Log = exporttest.TestLogger(t)
	s, err := export.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServeNBD(context.Background(), l) }()
	c := dialNBD(t, l.Addr().String(), nbd.ClientOptions{Export: "disk", Structured: true, BlockSize: true})
	idle, err := net.Dial("tcp", l.Addr().String()) // still in its handshake
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	for i := range 16 {
		c.send(req(nbd.CmdWrite, uint64(i+1), uint64(i)*bs, bs), pattern(bs, uint64(i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	if err := <-done; !errors.Is(err, export.ErrServerClosed) {
		t.Fatalf("ServeNBD: %v", err)
	}
	// Whatever the exporter had read was answered; then EOF.
	for {
		r, err := c.recv(nil)
		if err != nil {
			break
		}
		if r.errno != 0 {
			t.Fatalf("in-flight write failed at shutdown: %v", r.errno)
		}
	}
	c.c.Close()
	idle.Close()
	checkNoLeak(t, base)
}

func TestParseNBDListenURL(t *testing.T) {
	for in, want := range map[string]string{
		"nbd://127.0.0.1:10900":              "nbd://127.0.0.1:10900",
		"nbd://127.0.0.1":                    "nbd://127.0.0.1:10809",
		"nbd://[::1]:5/":                     "nbd://[::1]:5",
		"nbd://0.0.0.0:0":                    "nbd://0.0.0.0:0",
		"nbd+unix:///?socket=/run/x.sock":    "nbd+unix:///?socket=/run/x.sock",
		"nbd+unix:///?socket=/run/../x.sock": "nbd+unix:///?socket=/x.sock",
	} {
		u, err := export.ParseNBDListenURL(in)
		if err != nil || export.NBDURL(u) != want {
			t.Errorf("%s: %v, %v; want %s", in, u, err, want)
		}
	}
	for _, in := range []string{"nbd://h:1/disk", "nbd://:10809", "nbd+unix:///disk", "nbd+unix:///?socket=/a&x=1",
		"dst://127.0.0.1:1", "nbd://u@h:1", "nbd://h:1?keepalive=1s", "nbd://h:99999", "nbds://h:1"} {
		if _, err := export.ParseNBDListenURL(in); err == nil {
			t.Errorf("%s accepted", in)
		}
	}
}

// FuzzNBDConn feeds the exporter's NBD connection any byte stream after
// the client flags: it must answer or close, never crash or hang.
func FuzzNBDConn(f *testing.F) {
	var seed []byte
	seed = binary.BigEndian.AppendUint32(seed, nbd.ClientFixedNewstyle|nbd.ClientNoZeroes)
	seed = nbd.AppendOption(seed, nbd.OptStructuredReply, nil)
	seed = nbd.AppendOption(seed, nbd.OptGo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{Name: "disk"}))
	f.Add(append(nbd.AppendRequest(bytes.Clone(seed), req(nbd.CmdRead, 1, 3, 100)), nbd.AppendRequest(nil, req(nbd.CmdDisc, 2, 0, 0))...))
	w := nbd.AppendRequest(bytes.Clone(seed), req(nbd.CmdWrite, 1, 7, 5))
	f.Add(append(w, 1, 2, 3, 4, 5))
	f.Add(nbd.AppendRequest(bytes.Clone(seed), req(nbd.CmdWriteZeroes, 1, 100, 1<<20)))
	cfg := config(exporttest.File(f, 1<<20))
	cfg.Log = zap.NewNop() // a fuzz target must not log through f
	_, addr := startNBD(f, cfg)
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		wrote := make(chan struct{})
		go func() { defer close(wrote); c.Write(in); c.(*net.TCPConn).CloseWrite() }()
		defer func() { c.Close(); <-wrote }() // a Write blocked on a closed exporter ends
		// EOF or a reset (closed with input unread) are fine; a timeout
		// means the exporter hangs.
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("the exporter neither answered nor closed: %v", err)
		}
	})
}

// TestNBDExportName: the old EXPORT_NAME way in, with the default (empty)
// name of a single-export server and the 124 zeroes of a client without
// NO_ZEROES; such a client never agreed to block sizes, so it is served
// byte-granular.
func TestNBDExportName(t *testing.T) {
	path := exporttest.File(t, testSize)
	_, addr := startNBD(t, config(path))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var g [nbd.GreetingLen]byte
	if _, err := io.ReadFull(c, g[:]); err != nil {
		t.Fatal(err)
	}
	hello := binary.BigEndian.AppendUint32(nil, nbd.ClientFixedNewstyle)
	if _, err := c.Write(nbd.AppendOption(hello, nbd.OptExportName, nil)); err != nil {
		t.Fatal(err)
	}
	var rep [10 + nbd.ExportNameReplyZeroes]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		t.Fatal(err)
	}
	flags := nbd.TransmissionFlags(binary.BigEndian.Uint16(rep[8:]))
	if size := binary.BigEndian.Uint64(rep[:]); size != testSize || flags&nbd.FlagHasFlags == 0 || !isZero(rep[10:]) {
		t.Fatalf("EXPORT_NAME reply: size %d flags %v", size, flags)
	}
	nc := &nbdClient{t: t, c: c}
	data := pattern(700, 4)
	if r := nc.do(req(nbd.CmdWrite, 1, 4095, 700), data); r.errno != 0 {
		t.Fatalf("unaligned write: %v", r.errno)
	}
	if r := nc.do(req(nbd.CmdRead, 2, 4095, 700), nil); r.errno != 0 || !bytes.Equal(r.data, data) {
		t.Fatalf("unaligned read back: %v", r.errno)
	}
	if !bytes.Equal(fileAt(t, path, 4095, 700), data) || !isZero(fileAt(t, path, 0, 4095)) {
		t.Fatal("file content around an unaligned write is wrong")
	}
}

// TestNBDShutdownUnderLoad: Shutdown while four connections keep many
// reads and writes in flight (and one client stopped reading its replies)
// ends every connection, returns in time and leaves no goroutine.
func TestNBDShutdownUnderLoad(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := config(exporttest.File(t, testSize))
	cfg.Log = exporttest.TestLogger(t)
	s, err := export.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServeNBD(context.Background(), l) }()
	var wg sync.WaitGroup
	for k := range 4 {
		c := dialNBD(t, l.Addr().String(), nbd.ClientOptions{Export: "disk", Structured: k%2 == 0, BlockSize: true})
		wg.Add(2)
		go func() { // sender: until the exporter closes
			defer wg.Done()
			p := pattern(16<<10, uint64(k))
			for i := uint64(0); ; i++ {
				var b []byte
				if i%2 == 0 {
					b = append(nbd.AppendRequest(nil, req(nbd.CmdWrite, i, (i%256)*16<<10, 16<<10)), p...)
				} else {
					b = nbd.AppendRequest(nil, req(nbd.CmdRead, i, (i%256)*16<<10, 16<<10))
				}
				if _, err := c.c.Write(b); err != nil {
					return
				}
			}
		}()
		go func() { // receiver, except on the last client (it never reads)
			defer wg.Done()
			if k == 3 {
				return
			}
			lengths := map[uint64]uint32{}
			for i := uint64(1); i < 1<<20; i += 2 {
				lengths[i] = 16 << 10
			}
			for {
				if _, err := c.recv(lengths); err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// The client that stopped reading holds its connection's writer for
	// the NBD write timeout (10 s), no longer.
	if d := time.Since(start); d > 15*time.Second || ctx.Err() != nil {
		t.Fatalf("Shutdown under load took %v", d)
	}
	if err := <-done; !errors.Is(err, export.ErrServerClosed) {
		t.Fatalf("ServeNBD: %v", err)
	}
	wg.Wait() // the exporter closed every connection: senders and receivers end
	checkNoLeak(t, base)
}

// TestNBDLimits: with a small MaxInflight and MaxBufferBytes, a client
// that pipelines writes of every size (small ones that come with their
// header, 100 KiB ones received straight into their buffer, a 1 MiB one
// larger than the whole budget, unaligned ones) and then reads them back
// gets every reply and its data: the connection stops reading at the
// limits and goes on as replies leave.
func TestNBDLimits(t *testing.T) {
	path := exporttest.File(t, testSize)
	cfg := config(path)
	cfg.MaxInflight = 4
	cfg.MaxBufferBytes = 256 << 10
	_, addr := startNBD(t, cfg)
	c := dialNBD(t, addr, nbd.ClientOptions{Export: "disk", Structured: true})
	sizes := []uint32{4096, 100 << 10, 512, 1 << 20, 3000, 64 << 10, 8192, 100<<10 + 7}
	data := pattern(testSize/2, 5)
	type span struct{ off, n uint32 }
	var spans []span
	var out []byte
	off := uint32(0)
	for i := range 40 {
		n := sizes[i%len(sizes)]
		if off+n > uint32(len(data)) {
			off = uint32(i * 4096 % 65536)
		}
		spans = append(spans, span{off, n})
		off += n + 512
	}
	// Later writes must not overlap earlier ones in flight: write each
	// span's bytes from the same pattern, so overlaps write equal bytes.
	for i, s := range spans {
		out = append(nbd.AppendRequest(out, req(nbd.CmdWrite, uint64(i+1), uint64(s.off), s.n)), data[s.off:s.off+s.n]...)
	}
	wait := c.sendAsync(out)
	for range spans {
		if r, err := c.recv(nil); err != nil || r.errno != 0 {
			t.Fatalf("write reply %+v, %v", r, err)
		}
	}
	wait()
	lengths := map[uint64]uint32{}
	out = out[:0]
	for i, s := range spans {
		lengths[uint64(100+i)] = s.n
		out = nbd.AppendRequest(out, req(nbd.CmdRead, uint64(100+i), uint64(s.off), s.n))
	}
	wait = c.sendAsync(out)
	for range spans {
		r, err := c.recv(lengths)
		if err != nil || r.errno != 0 {
			t.Fatalf("read reply %+v, %v", r, err)
		}
		s := spans[r.cookie-100]
		if !bytes.Equal(r.data, data[s.off:s.off+s.n]) {
			t.Fatalf("read %d (%d bytes at %d) returned other data", r.cookie, s.n, s.off)
		}
	}
	wait()
}

// TestNBDBuffered: a buffered export (writes without FUA are copied into
// the page cache on the connection's loop, FUA ones go through io_uring):
// pipelined writes of both kinds, then reads, see the same bytes as the
// file.
func TestNBDBuffered(t *testing.T) {
	path := exporttest.File(t, testSize)
	cfg := config(path)
	cfg.Exports[0].Buffered = true
	_, addr := startNBD(t, cfg)
	c := dialNBD(t, addr, nbd.ClientOptions{Export: "disk", Structured: true, BlockSize: true})
	const n = 32
	data := pattern(n*bs, 9)
	var out []byte
	for i := range n {
		r := req(nbd.CmdWrite, uint64(i+1), uint64(i)*bs, bs)
		if i%3 == 0 {
			r.Flags = nbd.CmdFlagFUA
		}
		out = append(nbd.AppendRequest(out, r), data[i*bs:(i+1)*bs]...)
	}
	wait := c.sendAsync(out)
	for range n {
		if r, err := c.recv(nil); err != nil || r.errno != 0 {
			t.Fatalf("write reply %+v, %v", r, err)
		}
	}
	wait()
	if r := c.do(req(nbd.CmdRead, 100, 0, n*bs), nil); r.errno != 0 || !bytes.Equal(r.data, data) {
		t.Fatalf("read back: %v", r.errno)
	}
	if got := fileAt(t, path, 0, n*bs); !bytes.Equal(got, data) {
		t.Fatal("file content differs from what was written")
	}
}
