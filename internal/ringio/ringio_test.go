package ringio

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/internal/uring"
)

func ring(t *testing.T) (*uring.Ring, GetSQE) {
	r, err := uring.New(uring.Options{Entries: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	get := func() *uring.SQE {
		for {
			if s := r.GetSQE(); s != nil {
				return s
			}
			r.Submit()
		}
	}
	return r, get
}

func socketpair(t *testing.T, sndbuf int) (int, int) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if sndbuf > 0 {
		unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf)
		unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_RCVBUF, sndbuf)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

// TestStream sends a random stream of slices in batches, some of them
// pushed (Sender.Push) as they are queued, with a small socket buffer so
// that writes are partial, and receives it with both the
// staging buffer and direct receives; the bytes must arrive intact.
func TestStream(t *testing.T) {
	for _, sndbuf := range []int{0, 4096} {
		runtime.LockOSThread()
		r, get := ring(t)
		a, b := socketpair(t, sndbuf)
		snd := NewSender(a, 1)
		rcv := NewReceiver(b, 2, 8192)
		rng := rand.New(rand.NewPCG(1, uint64(sndbuf)))
		var want bytes.Buffer
		var got bytes.Buffer
		var direct []byte
		batches := 0
		for batch := 0; batch < 200; batch++ {
			for range 1 + rng.IntN(20) {
				x := make([]byte, 1+rng.IntN(30000))
				for i := range x {
					x[i] = byte(rng.Uint32())
				}
				want.Write(x)
				snd.Queue(x)
				if rng.IntN(3) == 0 {
					// Written at once as far as the socket takes it;
					// the rest stays queued, in order.
					if _, err := snd.Push(); err != nil {
						t.Fatal(err)
					}
				}
			}
			snd.Flush(get)
			// Run until this batch is sent and received.
			for snd.Busy() || snd.Pending() > 0 || got.Len()+len(rcv.Buffered()) < want.Len() {
				if !rcv.Busy() && direct == nil {
					// Alternate: sometimes take a big chunk directly.
					if need := want.Len() - got.Len() - len(rcv.Buffered()); need > 10000 && rng.IntN(2) == 0 {
						direct = make([]byte, len(rcv.Buffered())+need/2)
						if ok, err := rcv.ReadInto(direct, get); err != nil {
							t.Fatal(err)
						} else if ok {
							got.Write(direct)
							direct = nil
						}
					} else {
						got.Write(rcv.Buffered())
						rcv.Consume(len(rcv.Buffered()))
						rcv.Arm(get)
					}
				}
				var cq [8]uring.CQE
				n, err := r.Wait(cq[:], int64(5*time.Second))
				if err != nil {
					t.Fatal(err)
				}
				for _, c := range cq[:n] {
					switch c.UserData {
					case 1:
						done, err := snd.Complete(c.Res, get)
						if err != nil {
							t.Fatal(err)
						}
						if done {
							batches++
							snd.Flush(get)
						}
					case 2:
						d, err := rcv.Complete(c.Res, get)
						if err != nil {
							t.Fatal(err)
						}
						if d {
							got.Write(direct)
							direct = nil
						}
					}
				}
			}
			got.Write(rcv.Buffered())
			rcv.Consume(len(rcv.Buffered()))
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("sndbuf %d: stream differs (%d vs %d bytes)", sndbuf, got.Len(), want.Len())
		}
		if batches == 0 {
			t.Fatal("no send completed")
		}
		runtime.UnlockOSThread()
	}
}

func TestPeerCloseAndErrors(t *testing.T) {
	r, get := ring(t)
	a, b := socketpair(t, 0)
	rcv := NewReceiver(b, 2, 64)
	rcv.Arm(get)
	unix.Close(a)
	var cq [1]uring.CQE
	if n, err := r.Wait(cq[:], int64(5*time.Second)); err != nil || n != 1 {
		t.Fatal(n, err)
	}
	if _, err := rcv.Complete(cq[0].Res, get); !errors.Is(err, ErrClosed) {
		t.Fatalf("recv after peer close: %v", err)
	}
	if rcv.Arm(get) {
		t.Fatal("re-armed after EOF")
	}
	if _, err := rcv.ReadInto(make([]byte, 10), get); !errors.Is(err, ErrClosed) {
		t.Fatalf("ReadInto after EOF: %v", err)
	}
	snd := NewSender(b, 1)
	snd.Queue([]byte("x"))
	snd.Flush(get)
	if n, err := r.Wait(cq[:], int64(5*time.Second)); err != nil || n != 1 {
		t.Fatal(n, err)
	}
	if _, err := snd.Complete(cq[0].Res, get); err == nil {
		t.Fatal("send to a closed peer succeeded")
	}
}

func TestDetachFd(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hello"))
			time.Sleep(100 * time.Millisecond)
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fd, err := DetachFd(c)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); fl&unix.O_NONBLOCK != 0 {
		t.Fatal("detached socket still non-blocking")
	}
	r, get := ring(t)
	rcv := NewReceiver(fd, 9, 64)
	rcv.Arm(get)
	var cq [1]uring.CQE
	if _, err := r.Wait(cq[:], int64(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	rcv.Complete(cq[0].Res, get)
	if string(rcv.Buffered()) != "hello" {
		t.Fatalf("got %q", rcv.Buffered())
	}
}
