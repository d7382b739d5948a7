//go:build linux

package backend

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func newWorker(t testing.TB, depth int) *Worker {
	t.Helper()
	w, err := NewWorker(depth)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// waiter is a Request whose Done signals a channel.
type waiter struct {
	Request
	ch  chan error
	gid atomic.Uint64 // goroutine that ran Done
}

func newWaiter() *waiter {
	wt := &waiter{ch: make(chan error, 1)}
	wt.Done = func(r *Request, err error) {
		wt.gid.Store(goid())
		wt.ch <- err
	}
	return wt
}

func (wt *waiter) run(t testing.TB, w *Worker, f *File, op Op, flags Flags, off uint64, buf []byte, n uint32) error {
	t.Helper()
	wt.File, wt.Op, wt.Flags, wt.Off, wt.Buf, wt.Length = f, op, flags, off, buf, n
	if err := w.Submit(&wt.Request); err != nil {
		t.Fatalf("Submit: %v", err)
	}
	select {
	case err := <-wt.ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s %d@%d: no completion", op, n, off)
		return nil
	}
}

// goid returns the current goroutine's id (tests only).
func goid() uint64 {
	var b [64]byte
	s := string(b[:runtime.Stack(b[:], false)])
	s = strings.TrimPrefix(s, "goroutine ")
	id, _ := strconv.ParseUint(s[:strings.IndexByte(s, ' ')], 10, 64)
	return id
}

func TestNewWorkerDepth(t *testing.T) {
	for _, d := range []int{0, -1, MaxDepth + 1} {
		if w, err := NewWorker(d); err == nil {
			w.Close()
			t.Fatalf("NewWorker(%d) succeeded", d)
		}
	}
	w := newWorker(t, 1)
	if w.Depth() != 1 || w.QueueLen() != 64 {
		t.Fatalf("depth %d queue %d", w.Depth(), w.QueueLen())
	}
}

// TestWorkerOps runs every op, including the synchronous path and a Check
// failure, and checks that every Done runs on one goroutine.
func TestWorkerOps(t *testing.T) {
	path := tempFile(t, 1<<20)
	f := openFile(t, path, Options{})
	w := newWorker(t, 4)
	buf := alignedBuf(t, 8192)
	model := make([]byte, 1<<20)
	pattern(model, 0)
	wt := newWaiter()
	gids := map[uint64]bool{}
	step := func(op Op, flags Flags, off uint64, n uint32, wantErr unix.Errno) {
		t.Helper()
		err := wt.run(t, w, f, op, flags, off, buf, n)
		if Errno(err) != wantErr {
			t.Fatalf("%s flags %#x %d@%d: %v, want errno %v", op, flags, n, off, err, wantErr)
		}
		gids[wt.gid.Load()] = true
	}
	for i := range buf {
		buf[i] = byte(i * 3)
	}
	step(OpWrite, 0, 4096, 8192, 0)
	copy(model[4096:], buf)
	step(OpWrite, FlagFUA, 65536, 4096, 0)
	copy(model[65536:], buf[:4096])
	step(OpFlush, 0, 0, 0, 0)
	step(OpDiscard, 0, 8192, 4096, 0)
	clear(model[8192 : 8192+4096])
	step(OpDiscard, FlagFUA, 131072, 8192, 0) // sync path
	clear(model[131072 : 131072+8192])
	step(OpWriteZeroes, FlagNoUnmap|FlagFUA, 196608, 4096, 0) // sync path
	clear(model[196608 : 196608+4096])
	step(OpWriteZeroes, 0, 262144, 8192, 0)
	clear(model[262144 : 262144+8192])
	step(OpRead, 0, 100, 512, unix.EINVAL)    // misaligned: Check via Done
	step(OpWrite, 0, 1<<20, 512, unix.ENOSPC) // beyond the end
	step(Op(42), 0, 0, 512, unix.EINVAL)      // unknown op
	step(OpRead, 0, 0, 16384, unix.EINVAL)    // buffer too small
	step(OpRead, 0, 4096-512, 8192, 0)
	if !bytes.Equal(buf, model[4096-512:4096-512+8192]) {
		t.Fatal("worker read differs from the model")
	}
	if len(gids) != 1 {
		t.Fatalf("Done ran on %d goroutines, want the worker's one", len(gids))
	}
	if gids[goid()] {
		t.Fatal("Done ran on the submitting goroutine")
	}
	if got := readBack(t, path, 1<<20); !bytes.Equal(got, model) {
		t.Fatal("file differs from the model")
	}
}

func TestWorkerSubmitErrors(t *testing.T) {
	f := openFile(t, tempFile(t, 1<<20), Options{})
	w := newWorker(t, 2)
	buf := alignedBuf(t, 4096)
	// A Request submitted twice before its Done: ErrBusy. Hold the worker
	// inside Done so the first submission cannot finish.
	release := make(chan struct{})
	done := make(chan error, 2)
	req := &Request{File: f, Op: OpRead, Buf: buf, Length: 4096, Done: func(r *Request, err error) {
		done <- err
		<-release
	}}
	if err := w.Submit(req); err != nil {
		t.Fatal(err)
	}
	if err := w.Submit(req); !errors.Is(err, ErrBusy) || Errno(err) != unix.EBUSY {
		t.Fatalf("second Submit of an in-flight request: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Inside Done the request is the caller's again: it may be resubmitted.
	close(release)
	if err := w.Submit(req); err != nil {
		t.Fatalf("resubmit after Done: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := w.Submit(req); !errors.Is(err, ErrClosed) || Errno(err) != unix.ESHUTDOWN {
		t.Fatalf("Submit after Close: %v", err)
	}
}

// TestWorkerConcurrent hammers one Worker from many goroutines, each on its
// own region, and checks every read.
func TestWorkerConcurrent(t *testing.T) {
	const (
		goroutines = 16
		region     = 256 << 10
		iters      = 100
	)
	path := tempFile(t, goroutines*region)
	f := openFile(t, path, Options{})
	w := newWorker(t, 8)
	slab := alignedBuf(t, goroutines*2*65536)
	var wg sync.WaitGroup
	errc := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 99))
			wbuf := slab[g*2*65536 : g*2*65536+65536]
			rbuf := slab[g*2*65536+65536 : (g+1)*2*65536]
			wt := newWaiter()
			base := uint64(g * region)
			for range iters {
				n := uint32(1+rng.IntN(16)) * 4096
				off := base + uint64(rng.IntN((region-int(n))/512+1))*512
				for i := range wbuf[:n] {
					wbuf[i] = byte(rng.Uint32())
				}
				flags := Flags(0)
				if rng.IntN(4) == 0 {
					flags = FlagFUA
				}
				if err := wt.run(t, w, f, OpWrite, flags, off, wbuf, n); err != nil {
					errc <- err
					return
				}
				if err := wt.run(t, w, f, OpRead, 0, off, rbuf, n); err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(wbuf[:n], rbuf[:n]) {
					errc <- errors.New("read back differs")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

// TestWorkerCloseWhileBusy closes a Worker under load: every accepted
// request gets exactly one Done, later Submits fail, and no goroutine is
// left behind.
func TestWorkerCloseWhileBusy(t *testing.T) {
	f := openFile(t, tempFile(t, 4<<20), Options{})
	before := runtime.NumGoroutine()
	w, err := NewWorker(16)
	if err != nil {
		t.Fatal(err)
	}
	const producers, perProducer = 8, 8
	slab := alignedBuf(t, producers*perProducer*4096)
	var accepted, done, refused atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			free := make(chan *Request, perProducer)
			for i := range perProducer {
				k := p*perProducer + i
				op := OpRead
				if k%3 == 0 {
					op = OpWrite
				}
				if k%7 == 0 {
					op = OpDiscard // some FUA discards take the helper path
				}
				free <- &Request{File: f, Op: op, Flags: Flags(k%2) * FlagFUA, Off: uint64(k) * 4096,
					Buf: slab[k*4096 : (k+1)*4096], Length: 4096,
					Done: func(r *Request, err error) {
						if err != nil {
							t.Errorf("request failed: %v", err)
						}
						done.Add(1)
						free <- r
					}}
			}
			for {
				select {
				case <-stop:
					return
				case r := <-free:
					switch err := w.Submit(r); {
					case err == nil:
						accepted.Add(1)
					case errors.Is(err, ErrClosed):
						refused.Add(1)
						return
					default:
						t.Errorf("Submit: %v", err)
						return
					}
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// Close returned: every accepted request has had its Done.
	if a, d := accepted.Load(), done.Load(); a != d || a == 0 {
		t.Fatalf("accepted %d requests, %d completions", a, d)
	}
	close(stop)
	wg.Wait()
	t.Logf("accepted %d requests before Close, %d producers refused after", accepted.Load(), refused.Load())
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before the Worker, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWorkerAllocs checks that a submit/complete cycle allocates nothing.
func TestWorkerAllocs(t *testing.T) {
	f := openFile(t, tempFile(t, 1<<20), Options{})
	w := newWorker(t, 4)
	buf := alignedBuf(t, 4096)
	wt := newWaiter()
	wt.File, wt.Op, wt.Off, wt.Buf, wt.Length = f, OpRead, 8192, buf, 4096
	wt.Done = func(r *Request, err error) { wt.ch <- err }
	allocs := testing.AllocsPerRun(500, func() {
		if err := w.Submit(&wt.Request); err != nil {
			t.Fatal(err)
		}
		if err := <-wt.ch; err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per request", allocs)
	}
}

// TestWorkerBatches checks that requests queued while the worker is busy go
// to the kernel together: one io_uring_enter for many requests.
func TestWorkerBatches(t *testing.T) {
	f := openFile(t, tempFile(t, 1<<20), Options{})
	w, err := NewWorker(32)
	if err != nil {
		t.Fatal(err)
	}
	buf := alignedBuf(t, 32*4096)
	release := make(chan struct{})
	done := make(chan error, 64)
	// The first request's Done holds the worker goroutine until all others
	// are queued.
	entered := make(chan struct{})
	first := &Request{File: f, Op: OpFlush, Done: func(r *Request, err error) {
		close(entered)
		<-release
		done <- err
	}}
	if err := w.Submit(first); err != nil {
		t.Fatal(err)
	}
	<-entered
	reqs := make([]*Request, 32)
	for i := range reqs {
		reqs[i] = &Request{File: f, Op: OpRead, Off: uint64(i) * 4096, Buf: buf[i*4096 : (i+1)*4096], Length: 4096,
			Done: func(r *Request, err error) { done <- err }}
		if err := w.Submit(reqs[i]); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	for range 33 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// The 32 queued requests went to the kernel in one io_uring_enter.
	t.Logf("%d requests prepared, %d io_uring_enter calls (submitting or waiting), largest batch %d",
		w.prepared, w.enters, w.maxBatch)
	if w.prepared != 33 || w.maxBatch != 32 {
		t.Fatalf("largest batch %d of %d requests, want the 32 queued ones together", w.maxBatch, w.prepared)
	}
}
