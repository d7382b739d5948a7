package transport_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/dst-dev/dst/transport"
	"github.com/dst-dev/dst/transport/internal/leakcheck"
)

// The tests in this file run against every transport (tcp over IPv4 and
// IPv6, unix, mem): the conns they return must behave alike.

func TestEcho(t *testing.T) {
	forKinds(t, func(t *testing.T, k kind) {
		leakcheck.Check(t)
		l, u := listen(t, k.listenURL(t), transport.Options{})
		var g group
		defer g.Wait(t)
		g.Go(func() error {
			c, err := l.Accept()
			if err != nil {
				return fmt.Errorf("accept: %w", err)
			}
			defer c.Close()
			_, err = io.Copy(c, c)
			return err
		})
		c, u2, err := transport.Dial(context.Background(), u.String(), transport.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if u2.String() != u.String() {
			t.Errorf("Dial returned URL %s, want %s", u2, u)
		}
		buf := make([]byte, 100)
		for i := range 10 {
			msg := []byte(fmt.Sprintf("message %d over %s", i, k.name))
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:len(msg)], msg) {
				t.Fatalf("echo = %q, want %q", buf[:len(msg)], msg)
			}
		}
		c.Close()
	})
}

// TestLargeTransfer sends 64 MiB each way at once and checks both with
// SHA-256.
func TestLargeTransfer(t *testing.T) {
	size := int64(64 << 20)
	if testing.Short() {
		size = 4 << 20
	}
	forKinds(t, func(t *testing.T, k kind) {
		leakcheck.Check(t)
		client, server := pair(t, k, transport.Options{})
		var g group
		var sentC, gotS, sentS, gotC [sha256.Size]byte
		send := func(c net.Conn, seed uint64, sum *[sha256.Size]byte) func() error {
			return func() error {
				h := sha256.New()
				src := rand.NewChaCha8([32]byte{byte(seed)})
				if _, err := io.CopyN(io.MultiWriter(c, h), src, size); err != nil {
					return fmt.Errorf("send: %w", err)
				}
				copy(sum[:], h.Sum(nil))
				return nil
			}
		}
		recv := func(c net.Conn, sum *[sha256.Size]byte) func() error {
			return func() error {
				h := sha256.New()
				if _, err := io.CopyN(h, c, size); err != nil {
					return fmt.Errorf("receive: %w", err)
				}
				copy(sum[:], h.Sum(nil))
				return nil
			}
		}
		start := time.Now()
		g.Go(send(client, 1, &sentC))
		g.Go(recv(server, &gotS))
		g.Go(send(server, 2, &sentS))
		g.Go(recv(client, &gotC))
		g.Wait(t)
		if t.Failed() {
			return
		}
		t.Logf("%d MiB each way in %v", size>>20, time.Since(start))
		if sentC != gotS {
			t.Error("client to server: checksum mismatch")
		}
		if sentS != gotC {
			t.Error("server to client: checksum mismatch")
		}
		if sentC == sentS {
			t.Error("both directions sent the same data; the test is not checking anything")
		}
	})
}

// TestCloseSemantics: data written before Close is read, then EOF; calls on
// the closed end fail with net.ErrClosed; writes to a closed peer fail.
func TestCloseSemantics(t *testing.T) {
	forKinds(t, func(t *testing.T, k kind) {
		leakcheck.Check(t)
		client, server := pair(t, k, transport.Options{})
		msg := []byte("last words")
		if _, err := server.Write(msg); err != nil {
			t.Fatal(err)
		}
		if err := server.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(client)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("ReadAll = %q, %v; want %q, nil", got, err, msg)
		}
		if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Errorf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
		}
		// Writing to a closed peer fails, perhaps not at once on TCP.
		client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		var werr error
		for range 100 {
			if _, werr = client.Write(make([]byte, 4096)); werr != nil {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if werr == nil || errors.Is(werr, os.ErrDeadlineExceeded) {
			t.Errorf("Write to a closed peer: err = %v, want EPIPE or ECONNRESET", werr)
		} else if !errors.Is(werr, syscall.EPIPE) && !errors.Is(werr, syscall.ECONNRESET) {
			t.Errorf("Write to a closed peer: err = %v, want EPIPE or ECONNRESET", werr)
		}

		// The closed end itself.
		if _, err := server.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read on closed conn: %v, want net.ErrClosed", err)
		}
		if _, err := server.Write(msg); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Write on closed conn: %v, want net.ErrClosed", err)
		}
		if err := server.Close(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("second Close: %v, want net.ErrClosed", err)
		}
		if err := server.SetDeadline(time.Now()); err == nil {
			t.Error("SetDeadline on closed conn succeeded")
		}
	})
}

// TestCloseWrite: a half-close is seen as EOF by the peer, which can still
// answer.
func TestCloseWrite(t *testing.T) {
	forKinds(t, func(t *testing.T, k kind) {
		leakcheck.Check(t)
		client, server := pair(t, k, transport.Options{})
		var g group
		g.Go(func() error {
			req, err := io.ReadAll(server)
			if err != nil {
				return err
			}
			_, err = server.Write(append([]byte("re: "), req...))
			server.Close()
			return err
		})
		if _, err := client.Write([]byte("question")); err != nil {
			t.Fatal(err)
		}
		if err := client.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Write([]byte("more")); err == nil {
			t.Error("Write after CloseWrite succeeded")
		}
		got, err := io.ReadAll(client)
		if err != nil || string(got) != "re: question" {
			t.Errorf("reply = %q, %v", got, err)
		}
		g.Wait(t)
	})
}

func checkTimeout(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s: err = %v, want os.ErrDeadlineExceeded", what, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("%s: err = %v is not a net.Error with Timeout()", what, err)
	}
}

func TestReadDeadline(t *testing.T) {
	forKinds(t, func(t *testing.T, k kind) {
		leakcheck.Check(t)
		client, server := pair(t, k, transport.Options{})
		buf := make([]byte, 10)

		// A deadline in the future expires.
		start := time.Now()
		client.SetReadDeadline(start.Add(50 * time.Millisecond))
		_, err := client.Read(buf)
		checkTimeout(t, "Read", err)
		if d := time.Since(start); d < 40*time.Millisecond {
			t.Errorf("Read timed out after %v, want about 50ms", d)
		}
		// A timeout does not break the conn: clear the deadline and read.
		client.SetReadDeadline(time.Time{})
		server.Write([]byte("x"))
		if n, err := client.Read(buf); n != 1 || err != nil {
			t.Fatalf("Read after clearing the deadline = %d, %v", n, err)
		}

		// A past deadline fails at once, even with data buffered.
		server.Write([]byte("y"))
		time.Sleep(10 * time.Millisecond)
		client.SetReadDeadline(time.Now().Add(-time.Second))
		_, err = client.Read(buf)
		checkTimeout(t, "Read with past deadline", err)
		client.SetReadDeadline(time.Time{})
		if n, err := client.Read(buf); n != 1 || buf[0] != 'y' || err != nil {
			t.Fatalf("Read = %d %q, %v; want the byte kept through the timeout", n, buf[:n], err)
		}

		// Setting a deadline applies to a Read already blocked.
		done := make(chan error, 1)
		go func() {
			_, err := client.Read(buf)
			done <- err
		}()
		time.Sleep(20 * time.Millisecond)
		client.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		select {
		case err := <-done:
			checkTimeout(t, "blocked Read", err)
		case <-time.After(5 * time.Second):
			client.Close()
			<-done
			t.Fatal("a new deadline did not unblock a pending Read")
		}
	})
}

func TestWriteDeadline(t *testing.T) {
	forKinds(t, func(t *testing.T, k kind) {
		leakcheck.Check(t)
		client, _ := pair(t, k, transport.Options{SendBuffer: 64 << 10, RecvBuffer: 64 << 10})
		// Nobody reads: the buffers fill and Write blocks until the deadline.
		client.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		big := make([]byte, 64<<20)
		n, err := client.Write(big)
		checkTimeout(t, "Write", err)
		if n >= len(big) {
			t.Errorf("Write wrote %d bytes with nobody reading", n)
		}
	})
}

// TestCloseUnblocks: Close of a conn unblocks its pending Read and Write.
func TestCloseUnblocks(t *testing.T) {
	forKinds(t, func(t *testing.T, k kind) {
		leakcheck.Check(t)
		client, _ := pair(t, k, transport.Options{SendBuffer: 64 << 10, RecvBuffer: 64 << 10})
		rdone := make(chan error, 1)
		wdone := make(chan error, 1)
		go func() {
			_, err := client.Read(make([]byte, 10))
			rdone <- err
		}()
		go func() {
			_, err := client.Write(make([]byte, 64<<20))
			wdone <- err
		}()
		time.Sleep(50 * time.Millisecond)
		client.Close()
		for name, ch := range map[string]chan error{"Read": rdone, "Write": wdone} {
			select {
			case err := <-ch:
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("%s after Close: %v, want net.ErrClosed", name, err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("Close did not unblock %s", name)
			}
		}
	})
}

func TestAccept(t *testing.T) {
	forKinds(t, func(t *testing.T, k kind) {
		leakcheck.Check(t)
		l, u := listen(t, k.listenURL(t), transport.Options{})
		dl := l.(interface{ SetDeadline(time.Time) error })

		// Deadline.
		start := time.Now()
		dl.SetDeadline(start.Add(50 * time.Millisecond))
		_, err := l.Accept()
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Accept with deadline: %v, want os.ErrDeadlineExceeded", err)
		}
		if d := time.Since(start); d < 40*time.Millisecond {
			t.Errorf("Accept timed out after %v", d)
		}
		dl.SetDeadline(time.Time{})

		// AcceptContext: cancellation.
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(30*time.Millisecond, cancel)
		_, err = transport.AcceptContext(ctx, l)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("AcceptContext after cancel: %v, want context.Canceled", err)
		}
		// ... which leaves the listener usable.
		c, s := dialAccept(t, l, u, transport.Options{})
		c.Close()
		s.Close()

		// Close unblocks Accept.
		done := make(chan error, 1)
		go func() {
			_, err := l.Accept()
			done <- err
		}()
		time.Sleep(20 * time.Millisecond)
		l.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not unblock Accept")
		}
	})
}

func TestDialCanceled(t *testing.T) {
	forKinds(t, func(t *testing.T, k kind) {
		leakcheck.Check(t)
		_, u := listen(t, k.listenURL(t), transport.Options{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		c, err := transport.DialURL(ctx, u, transport.Options{})
		if err == nil {
			c.Close()
			t.Fatal("Dial with a canceled context succeeded")
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Dial: %v, want context.Canceled", err)
		}
		if want := "dial " + u.String() + ": "; len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
			t.Errorf("error %q lacks the prefix %q", err, want)
		}
	})
}

func TestDialRefused(t *testing.T) {
	forKinds(t, func(t *testing.T, k kind) {
		leakcheck.Check(t)
		l, u := listen(t, k.listenURL(t), transport.Options{})
		l.Close()
		c, err := transport.DialURL(context.Background(), u, transport.Options{})
		if err == nil {
			c.Close()
			t.Fatal("Dial to a closed listener succeeded")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			t.Errorf("Dial to a closed listener: %v, want ECONNREFUSED or ENOENT", err)
		}
	})
}

// TestConcurrentWrites: Writes from several goroutines do not interleave.
func TestConcurrentWrites(t *testing.T) {
	forKinds(t, func(t *testing.T, k kind) {
		leakcheck.Check(t)
		client, server := pair(t, k, transport.Options{})
		const writers, writes, size = 4, 50, 20000
		var g group
		for w := range writers {
			g.Go(func() error {
				msg := bytes.Repeat([]byte{byte('a' + w)}, size)
				for range writes {
					if _, err := client.Write(msg); err != nil {
						return err
					}
				}
				return nil
			})
		}
		buf := make([]byte, size)
		for i := range writers * writes {
			if _, err := io.ReadFull(server, buf); err != nil {
				t.Fatal(err)
			}
			if bytes.Count(buf, buf[:1]) != size {
				t.Fatalf("message %d is interleaved", i)
			}
		}
		g.Wait(t)
	})
}
