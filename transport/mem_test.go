package transport_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/dst-dev/dst/transport"
	"github.com/dst-dev/dst/transport/internal/leakcheck"
)

var memKind = kinds[3]

func TestMemListenerRegistry(t *testing.T) {
	leakcheck.Check(t)
	rawURL := memKind.listenURL(t)
	l, u := listen(t, rawURL, transport.Options{})
	if u.String() != rawURL {
		t.Errorf("bound URL %s, want %s", u, rawURL)
	}
	if l.Addr().Network() != "mem" {
		t.Errorf("Addr().Network() = %q", l.Addr().Network())
	}
	if _, _, err := transport.Listen(context.Background(), rawURL, transport.Options{}); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("second Listen on %s: %v, want EADDRINUSE", rawURL, err)
	}
	c, s := dialAccept(t, l, u, transport.Options{})
	l.Close()
	if err := l.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v, want net.ErrClosed", err)
	}
	// Accepted conns outlive their listener.
	if _, err := c.Write([]byte("x")); err != nil {
		t.Errorf("Write after listener Close: %v", err)
	}
	if _, err := s.Read(make([]byte, 1)); err != nil {
		t.Errorf("Read after listener Close: %v", err)
	}
	// The name is free again.
	l2, _ := listen(t, rawURL, transport.Options{})
	l2.Close()
	if _, _, err := transport.Dial(context.Background(), "dst+mem://no-such-listener/e", transport.Options{}); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Dial to an unknown name: %v, want ECONNREFUSED", err)
	}
}

// TestMemBacklog: Dial completes before Accept, up to the backlog; beyond
// it Dial waits, bounded by its context; closing the listener closes the
// conns nobody accepted.
func TestMemBacklog(t *testing.T) {
	leakcheck.Check(t)
	l, u := listen(t, memKind.listenURL(t), transport.Options{})
	var pending []net.Conn
	defer func() {
		for _, c := range pending {
			c.Close()
		}
	}()
	for i := 0; ; i++ {
		if i > 1000 {
			t.Fatal("1000 dials without Accept all succeeded: no backlog limit")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		c, err := transport.DialURL(ctx, u, transport.Options{})
		cancel()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("dial %d: %v, want context.DeadlineExceeded", i, err)
			}
			t.Logf("backlog full after %d dials", i)
			break
		}
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		pending = append(pending, c)
	}
	if len(pending) < 2 {
		t.Fatalf("backlog of %d", len(pending))
	}
	// Accept returns the conns in dial order.
	for i := range 2 {
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := s.Read(b); err != nil || b[0] != byte(i) {
			t.Errorf("accepted conn %d carries %d, %v", i, b[0], err)
		}
		s.Close()
	}
	l.Close()
	// The conns not accepted were closed: their clients read EOF.
	for i, c := range pending[2:] {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("pending conn %d after listener Close: %v, want io.EOF", i+2, err)
		}
	}
}

// TestMemBuffered: Write returns once its bytes are buffered, without a
// reader, and blocks only when the buffer (SendBuffer) is full.
func TestMemBuffered(t *testing.T) {
	leakcheck.Check(t)
	c, s := pair(t, memKind, transport.Options{})
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	data := bytes.Repeat([]byte("0123456789abcdef"), transport.MemBufferSize/16)
	if n, err := c.Write(data); n != len(data) || err != nil {
		t.Fatalf("Write of %d bytes with no reader = %d, %v; want it buffered", len(data), n, err)
	}
	// The buffer is full now: one more byte blocks.
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := c.Write([]byte("!")); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write into a full buffer = %d, %v; want 0, timeout", n, err)
	}
	got := make([]byte, len(data))
	if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadFull: %v, equal %v", err, bytes.Equal(got, data))
	}

	// A small SendBuffer bounds the buffer exactly.
	c2, _ := pair(t, memKind, transport.Options{SendBuffer: 4096})
	c2.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := c2.Write(make([]byte, 10000)); n != 4096 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write of 10000 bytes into a 4096-byte buffer = %d, %v; want 4096, timeout", n, err)
	}
}

// TestMemWriterUnblockedByPeerClose: a Write blocked on a full buffer fails
// with EPIPE when the reader closes.
func TestMemWriterUnblockedByPeerClose(t *testing.T) {
	leakcheck.Check(t)
	c, s := pair(t, memKind, transport.Options{SendBuffer: 4096})
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, 1<<20))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EPIPE) {
			t.Errorf("blocked Write after peer Close: %v, want EPIPE", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("peer Close did not unblock Write")
	}
}

func TestMemMisc(t *testing.T) {
	leakcheck.Check(t)
	c, s := pair(t, memKind, transport.Options{})
	if n, err := c.Read(nil); n != 0 || err != nil {
		t.Errorf("empty Read = %d, %v", n, err)
	}
	if n, err := c.Write(nil); n != 0 || err != nil {
		t.Errorf("empty Write = %d, %v", n, err)
	}
	if c.LocalAddr().String() != s.RemoteAddr().String() || c.RemoteAddr().String() != s.LocalAddr().String() {
		t.Errorf("addresses do not match: %v-%v vs %v-%v", c.LocalAddr(), c.RemoteAddr(), s.LocalAddr(), s.RemoteAddr())
	}
	// The ring wraps around many times.
	var g group
	const total = 10 << 20
	g.Go(func() error {
		buf := make([]byte, 7777)
		for i := range buf {
			buf[i] = byte(i)
		}
		for sent := 0; sent < total; sent += len(buf) {
			if _, err := c.Write(buf); err != nil {
				return err
			}
		}
		return c.Close()
	})
	got, err := io.ReadAll(s)
	g.Wait(t)
	if err != nil || len(got) != (total+7776)/7777*7777 {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	for i := range got {
		if got[i] != byte(i%7777) {
			t.Fatalf("byte %d = %d, want %d", i, got[i], byte(i%7777))
		}
	}
}
