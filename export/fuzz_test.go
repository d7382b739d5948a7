package export_test

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
)

func reqBytes(r wire.Request, payload []byte) []byte {
	b := make([]byte, wire.RequestHeaderSize, wire.RequestHeaderSize+len(payload))
	r.Put(b)
	return append(b, payload...)
}

// FuzzConn feeds arbitrary bytes to a connection, after a valid handshake
// or as the handshake itself. The exporter must not panic, must close the
// connection (the client half-closes after sending), and must go on
// serving another client.
func FuzzConn(f *testing.F) {
	path := exporttest.File(f, 4<<20)
	cfg := config(path)
	cfg.Exports = append(cfg.Exports, export.ExportConfig{Name: "ro", Path: exporttest.File(f, 1<<20), ReadOnly: true})
	cfg.Log = zap.NewNop() // F's log must not be used while fuzzing
	_, addr := exporttest.Start(f, cfg, exporttest.MemURL(f))

	hello := func(name string, flags ...bool) []byte {
		var buf bytes.Buffer
		_ = wire.WriteHello(&buf, &wire.Hello{Export: name, Features: exporttest.AllFeatures, WantReadOnly: len(flags) > 0})
		return buf.Bytes()
	}
	blk := make([]byte, 4096)
	f.Add(true, reqBytes(wire.Request{Op: wire.OpWrite, ID: 1, Length: 4096}, blk))
	f.Add(true, append(reqBytes(wire.Request{Op: wire.OpRead, ID: 1, Length: 4096}, nil),
		reqBytes(wire.Request{Op: wire.OpPing, ID: 2}, nil)...))
	f.Add(true, reqBytes(wire.Request{Op: wire.OpDisconnect, ID: 3}, nil))
	f.Add(true, reqBytes(wire.Request{Op: wire.OpWrite, ID: 1, Length: 1 << 20}, blk[:100]))
	f.Add(true, reqBytes(wire.Request{Op: wire.OpDiscard, ID: 9, Offset: 4096, Length: 8192, Floor: 3}, nil))
	f.Add(true, []byte("DSTQ\x09garbage"))
	f.Add(false, hello("disk"))
	f.Add(false, append(hello("ro", true), reqBytes(wire.Request{Op: wire.OpWrite, ID: 1, Length: 512}, blk[:512])...))
	f.Add(false, []byte("DSTH\x01\x00\x01\x00\xff\xff\x00\x00"))
	f.Add(false, []byte{})

	f.Fuzz(func(t *testing.T, handshake bool, data []byte) {
		c := exporttest.Dial(t, addr)
		if handshake {
			if _, err := c.Hello(&wire.Hello{Export: "disk", Features: exporttest.AllFeatures}); err != nil {
				t.Fatal(err)
			}
		}
		go func() { // the exporter may stop reading: do not wait for the write
			_ = c.SendRaw(data)
			if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
		}()
		c.ExpectClosed(10 * time.Second)

		// Another client is served.
		d := exporttest.Connect(t, addr, "disk")
		p := pattern(4096, uint64(len(data)))
		d.MustDo(wire.Request{Op: wire.OpWrite, ID: 1, Offset: 1 << 20, Length: 4096}, p, wire.StatusOK)
		if got := d.MustDo(wire.Request{Op: wire.OpRead, ID: 2, Offset: 1 << 20, Length: 4096}, nil, wire.StatusOK); !bytes.Equal(got, p) {
			t.Fatal("second client read back other data")
		}
		d.Close()
	})
}

// TestNoGoroutineLeak: after Shutdown every goroutine the server started
// is gone, with connections in every state: transferring, in flight,
// handshaking, detached, on several listeners.
func TestNoGoroutineLeak(t *testing.T) {
	path := exporttest.File(t, testSize)
	base := runtime.NumGoroutine()
	cfg := config(path)
	cfg.Log = exporttest.TestLogger(t)
	srv, err := export.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() }) // if the test fails before Shutdown
	var addrs []string
	serveErr := make(chan error, 3)
	for _, u := range []string{exporttest.TCP4, exporttest.UnixURL(t), exporttest.MemURL(t)} {
		l, bound, err := transport.Listen(context.Background(), u, transport.Options{})
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, bound.String())
		go func() { serveErr <- srv.Serve(context.Background(), l) }()
	}
	stop := make(chan struct{})
	var errcs []<-chan error
	for i, a := range addrs {
		errcs = append(errcs, transfer(t, a, uint64(i)<<20, stop))
		c := exporttest.Connect(t, a, "disk") // detached at once
		c.Close()
		exporttest.Dial(t, a) // stays in its handshake
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	for _, e := range errcs {
		if err := <-e; err != nil {
			t.Fatal(err)
		}
	}
	held := exporttest.Connect(t, addrs[0], "disk")
	srv.Hold(true)
	if err := held.Send(read(1, 0, bs), nil); err != nil {
		t.Fatal(err)
	}
	noReplies(t, held, 1<<63)
	go func() {
		time.Sleep(100 * time.Millisecond)
		srv.Hold(false)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for range addrs {
		if err := <-serveErr; !errors.Is(err, export.ErrServerClosed) {
			t.Fatalf("Serve: %v", err)
		}
	}
	// The in-flight read was answered before GOODBYE.
	recvOK(t, held, wire.OpRead, 1)
	if r, _, err := held.Recv(); err != nil || r.Op != wire.OpGoodbye {
		t.Fatalf("%+v, %v: want GOODBYE", r, err)
	}
	checkNoLeak(t, base)
	l, _, err := transport.Listen(context.Background(), exporttest.MemURL(t), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(context.Background(), l); !errors.Is(err, export.ErrServerClosed) {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
}
