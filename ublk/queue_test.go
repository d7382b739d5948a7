//go:build linux

package ublk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"unsafe"

	"github.com/dst-dev/dst/internal/metrics"
	"github.com/dst-dev/dst/internal/uring"
)

// fakeKernel stands in for the ublk driver so the real queue loop runs on
// the host. FETCH for a tag is an io_uring read of one 24-byte descriptor
// from a pipe into that tag's slot: the test writes descriptors into the
// pipe and whichever tag's read gets one serves it, as with the driver.
// Closing the pipe ends every read with EOF, which the fake reports as
// ABORT (the device is stopping). COMMIT records the result (and, for
// reads, a copy of the data) before fetching again.
type fakeKernel struct {
	pr, pw  *os.File
	descs   []byte
	mu      sync.Mutex
	writes  map[uint64][]byte // payload of WRITE requests by request id (desc.addr)
	commits chan commit
	// userCopy: the char device is a sparse temp file at the USER_COPY
	// offsets.
	char *os.File
}

type commit struct {
	tag  uint16
	res  int32
	id   uint64
	data []byte
}

func newFakeKernel(t *testing.T, depth int) *fakeKernel {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	char, err := os.Create(filepath.Join(t.TempDir(), "ublkc"))
	if err != nil {
		t.Fatal(err)
	}
	fk := &fakeKernel{pr: pr, pw: pw, char: char, descs: make([]byte, depth*sizeofIODesc),
		writes: map[uint64][]byte{}, commits: make(chan commit, 1<<16)}
	t.Cleanup(func() { pr.Close(); pw.Close(); char.Close() })
	return fk
}

func (fk *fakeKernel) open(q *queue) error { q.descs = fk.descs; return nil }
func (fk *fakeKernel) close(q *queue)      {}

func (fk *fakeKernel) prepFetch(q *queue, tag uint16, isCommit bool, res int32) {
	if isCommit {
		c := commit{tag: tag, res: res, id: binary.LittleEndian.Uint64(fk.descs[int(tag)*sizeofIODesc+16:])}
		r := &q.reqs[tag]
		if r.Op == OpRead && res > 0 {
			if q.userCopy {
				c.data = make([]byte, res)
				fk.char.ReadAt(c.data, userCopyOff(q.id, tag))
			} else {
				c.data = bytes.Clone(r.Buf[:res])
			}
		}
		if testing.Verbose() {
			fmt.Printf("commit tag %d id %d res %d\n", tag, c.id, res)
		}
		fk.commits <- c
	}
	s := q.getSQE()
	s.PrepRead(int(fk.pr.Fd()), fk.descs[int(tag)*sizeofIODesc:(int(tag)+1)*sizeofIODesc], ^uint64(0))
	s.SetUserData(kindCmd<<kindShift | uint64(tag))
}

func (fk *fakeKernel) result(q *queue, tag uint16, res int32) int32 {
	switch {
	case res == sizeofIODesc:
		d := unsafeDesc(fk.descs, tag)
		if testing.Verbose() {
			fmt.Printf("fetched tag %d id %d op %d\n", tag, d.addr, d.opFlags&0xff)
		}
		if d.opFlags&0xff == opWrite {
			fk.mu.Lock()
			data := fk.writes[d.addr]
			fk.mu.Unlock()
			if q.userCopy {
				fk.char.WriteAt(data, userCopyOff(q.id, tag))
			} else {
				copy(q.bufs[int(tag)*q.maxIO:], data)
			}
		}
		return ioResOK
	case res == 0:
		return ioResAbort
	case res > 0:
		panic(fmt.Sprintf("fake kernel: short descriptor read of %d bytes", res))
	}
	return res
}

// send queues one request; id must be unique and is echoed in the commit.
func (fk *fakeKernel) send(t *testing.T, id uint64, op uint8, flags uint32, sector uint64, sectors uint32, data []byte) {
	var b [sizeofIODesc]byte
	binary.LittleEndian.PutUint32(b[0:], uint32(op)|flags)
	binary.LittleEndian.PutUint32(b[4:], sectors)
	binary.LittleEndian.PutUint64(b[8:], sector)
	binary.LittleEndian.PutUint64(b[16:], id)
	if data != nil {
		fk.mu.Lock()
		fk.writes[id] = data
		fk.mu.Unlock()
	}
	if _, err := fk.pw.Write(b[:]); err != nil {
		t.Fatal(err)
	}
}

// runQueue runs a real queue with the fake kernel until the pipe closes.
func runQueue(t *testing.T, fk *fakeKernel, target Target, depth, maxIO int, userCopy bool) (wait func() *queue) {
	q := newQueue(0, depth, maxIO, userCopy, int(fk.char.Fd()), 0)
	q.port = fk
	ready := make(chan error)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if err := q.setup(target); err != nil {
			q.teardown()
			ready <- err
			return
		}
		ready <- nil
		q.run()
		q.teardown()
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fk.pw.Close(); <-done; q.closeWake() })
	return func() *queue {
		fk.pw.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("queue did not stop after the device was aborted")
		}
		return q
	}
}

// memTarget is a RAM disk that completes from other goroutines, in random
// order, after random delays: the path the transaction engine will use.
type memTarget struct {
	mu   sync.Mutex
	data []byte
	wg   sync.WaitGroup
	seed uint64
}

func (m *memTarget) Geometry() Geometry {
	return Geometry{Size: uint64(len(m.data)), LogicalBlockSize: 512}
}
func (m *memTarget) Describe() string { return "mem" }
func (m *memTarget) Close() error     { m.wg.Wait(); return nil }
func (m *memTarget) NewQueue(q *QueueContext) (QueueHandler, error) {
	return &memQueue{m: m, q: q, rng: rand.New(rand.NewPCG(m.seed, uint64(q.ID)))}, nil
}

type memQueue struct {
	m   *memTarget
	q   *QueueContext
	rng *rand.Rand
}

func (h *memQueue) Handle(r *Request) {
	delay := time.Duration(h.rng.IntN(200)) * time.Microsecond
	h.m.wg.Add(1)
	go func() {
		defer h.m.wg.Done()
		time.Sleep(delay)
		h.m.mu.Lock()
		var err syscall.Errno
		switch r.Op {
		case OpRead:
			copy(r.Buf, h.m.data[r.Offset:])
		case OpWrite:
			copy(h.m.data[r.Offset:], r.Buf)
		case OpDiscard, OpWriteZeroes:
			clear(h.m.data[r.Offset : r.Offset+uint64(r.Length)])
		case OpFlush:
		default:
			err = syscall.EIO
		}
		h.m.mu.Unlock()
		h.q.Complete(r.Tag, err)
	}()
}
func (h *memQueue) Close() {}

func TestQueueNullTarget(t *testing.T) {
	fk := newFakeKernel(t, 16)
	wait := runQueue(t, fk, &NullTarget{Size: 1 << 20, BlockSize: 512}, 16, 64<<10, false)
	fk.send(t, 1, opRead, 0, 8, 8, nil)
	fk.send(t, 2, opWrite, ioFlagFUA, 0, 16, bytes.Repeat([]byte{7}, 8192))
	fk.send(t, 3, opFlush, 0, 0, 0, nil)
	fk.send(t, 4, opDiscard, 0, 0, 64, nil)
	fk.send(t, 5, opWriteSame, 0, 0, 8, nil)           // not supported
	fk.send(t, 6, opRead, 0, 0, (128<<10)>>9, nil)     // larger than max I/O
	fk.send(t, 7, 18 /* REPORT_ZONES */, 0, 0, 0, nil) // unknown op
	want := map[uint64]int32{1: 4096, 2: 8192, 3: 0, 4: 0, 5: -int32(syscall.EOPNOTSUPP), 6: -int32(syscall.EINVAL), 7: -int32(syscall.EOPNOTSUPP)}
	for len(want) > 0 {
		select {
		case c := <-fk.commits:
			if c.res != want[c.id] {
				t.Errorf("request %d: result %d, want %d", c.id, c.res, want[c.id])
			}
			if c.id == 1 && !bytes.Equal(c.data, make([]byte, 4096)) {
				t.Error("null read did not return zeroes")
			}
			delete(want, c.id)
		case <-time.After(5 * time.Second):
			t.Fatalf("missing commits for %v", want)
		}
	}
	if q := wait(); q.err != nil || q.held != 0 {
		t.Fatalf("queue ended with err %v, %d requests held", q.err, q.held)
	}
}

// TestQueueAsyncTarget drives many concurrent requests through a target
// that completes out of order from other goroutines, and checks every
// result and every byte against a model, in both data modes.
func TestQueueAsyncTarget(t *testing.T) {
	for _, userCopy := range []bool{false, true} {
		t.Run(fmt.Sprintf("userCopy=%v", userCopy), func(t *testing.T) {
			const depth, size, maxIO = 32, 1 << 20, 64 << 10
			fk := newFakeKernel(t, depth)
			m := &memTarget{data: make([]byte, size), seed: 1}
			wait := runQueue(t, fk, m, depth, maxIO, userCopy)
			model := make([]byte, size)
			rng := rand.New(rand.NewPCG(9, 9))
			id := uint64(0)
			for round := range 40 {
				// One batch of non-overlapping requests in flight at once.
				n := 1 + rng.IntN(depth)
				type exp struct {
					res  int32
					read []byte
				}
				expect := map[uint64]exp{}
				used := map[uint64]bool{}
				for range n {
					blk := uint64(rng.IntN(size / maxIO))
					if used[blk] {
						continue
					}
					used[blk] = true
					id++
					sectors := uint32(1+rng.IntN(maxIO/512)) & ^uint32(0)
					off := blk * maxIO
					switch rng.IntN(4) {
					case 0:
						data := make([]byte, sectors*512)
						for i := range data {
							data[i] = byte(rng.Uint32())
						}
						copy(model[off:], data)
						fk.send(t, id, opWrite, 0, off>>9, sectors, data)
						expect[id] = exp{res: int32(len(data))}
					case 1:
						clear(model[off : off+uint64(sectors)*512])
						fk.send(t, id, opWriteZeroes, ioFlagNoUnmap, off>>9, sectors, nil)
						expect[id] = exp{}
					default:
						fk.send(t, id, opRead, 0, off>>9, sectors, nil)
						expect[id] = exp{res: int32(sectors * 512), read: bytes.Clone(model[off : off+uint64(sectors)*512])}
					}
				}
				for len(expect) > 0 {
					select {
					case c := <-fk.commits:
						e, ok := expect[c.id]
						if !ok {
							t.Fatalf("round %d: commit for unknown or repeated request %d", round, c.id)
						}
						if c.res != e.res || (e.read != nil && !bytes.Equal(c.data, e.read)) {
							t.Fatalf("round %d: request %d: res %d (want %d), data equal %v", round, c.id, c.res, e.res, bytes.Equal(c.data, e.read))
						}
						delete(expect, c.id)
					case <-time.After(10 * time.Second):
						t.Fatalf("round %d: %d commits missing", round, len(expect))
					}
				}
			}
			q := wait()
			if q.err != nil || q.held != 0 {
				t.Fatalf("queue ended with err %v, %d held", q.err, q.held)
			}
			if !bytes.Equal(m.data, model) {
				t.Fatal("target contents differ from the model")
			}
		})
	}
}

// TestQueueStopWaitsForTarget aborts the device while the target still
// holds requests: the queue must commit them all before it exits.
func TestQueueStopWaitsForTarget(t *testing.T) {
	fk := newFakeKernel(t, 8)
	m := &memTarget{data: make([]byte, 1<<20), seed: 2}
	wait := runQueue(t, fk, m, 8, 4096, false)
	for i := range 8 {
		fk.send(t, uint64(i+1), opRead, 0, uint64(i*8), 8, nil)
	}
	time.Sleep(time.Millisecond) // let some reach the target
	q := wait()
	if q.held != 0 {
		t.Fatalf("queue exited holding %d requests", q.held)
	}
	got := 0
	for len(fk.commits) > 0 {
		<-fk.commits
		got++
	}
	if got+q.aborted < 8 {
		t.Fatalf("%d commits and %d aborted tags, want all 8 accounted for", got, q.aborted)
	}
}

// ringTarget issues a NOP on the queue's ring per request and completes
// when it comes back: the RingHandler path the file target uses.
type ringTarget struct{ NullTarget }

func (t *ringTarget) NewQueue(q *QueueContext) (QueueHandler, error) {
	return &ringQueue{q: q}, nil
}

type ringQueue struct {
	q        *QueueContext
	inflight int
}

func (h *ringQueue) Handle(r *Request) {
	s := h.q.GetSQE()
	s.PrepNop()
	s.SetUserData(h.q.UserData(uint64(r.Tag)))
	h.inflight++
}
func (h *ringQueue) HandleCQE(c *uring.CQE) {
	h.inflight--
	h.q.Complete(uint16(FromUserData(c.UserData)), 0)
}
func (h *ringQueue) Inflight() int { return h.inflight }
func (h *ringQueue) Close()        {}

func TestQueueRingHandler(t *testing.T) {
	fk := newFakeKernel(t, 64)
	wait := runQueue(t, fk, &ringTarget{NullTarget{Size: 1 << 20, BlockSize: 512}}, 64, 4096, false)
	for i := range 500 {
		fk.send(t, uint64(i), opWrite, 0, uint64(i%256)*8, 8, make([]byte, 4096))
	}
	for range 500 {
		select {
		case c := <-fk.commits:
			if c.res != 4096 {
				t.Fatalf("request %d: %d", c.id, c.res)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("ring handler completions missing")
		}
	}
	if q := wait(); q.err != nil || q.busy() != 0 {
		t.Fatalf("queue ended with %v, busy %d", q.err, q.busy())
	}
}

func TestQueueForcedStop(t *testing.T) {
	fk := newFakeKernel(t, 4)
	q := newQueue(0, 4, 4096, false, int(fk.char.Fd()), 0)
	q.port = fk
	done := make(chan struct{})
	ready := make(chan error)
	go func() {
		defer close(done)
		runtime.LockOSThread()
		err := q.setup(&NullTarget{Size: 1 << 20, BlockSize: 512})
		ready <- err
		if err == nil {
			q.run()
		}
		q.teardown()
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	defer q.closeWake()
	q.requestStop()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("requestStop did not end the queue")
	}
}

func unsafeDesc(b []byte, tag uint16) *ioDesc {
	return (*ioDesc)(unsafe.Pointer(&b[int(tag)*sizeofIODesc]))
}

// TestQueueMetrics: the queue counts what it commits, per op, with the
// bytes of the successful requests, the errors, and a latency each.
func TestQueueMetrics(t *testing.T) {
	fk := newFakeKernel(t, 16)
	wait := runQueue(t, fk, &NullTarget{Size: 1 << 20, BlockSize: 512}, 16, 64<<10, false)
	const writes = 5
	for i := range writes {
		fk.send(t, uint64(1+i), opWrite, 0, uint64(8*i), 8, bytes.Repeat([]byte{1}, 4096))
	}
	fk.send(t, 10, opRead, 0, 0, 16, nil)
	fk.send(t, 11, opRead, 0, 0, (128<<10)>>9, nil) // larger than max I/O: EINVAL
	fk.send(t, 12, opFlush, 0, 0, 0, nil)
	fk.send(t, 13, 18, 0, 0, 0, nil) // unknown op: not counted
	for range writes + 4 {
		select {
		case <-fk.commits:
		case <-time.After(5 * time.Second):
			t.Fatal("missing commits")
		}
	}
	q := wait()
	s := q.io.Snapshot()
	w, r, f := s.Op[metrics.Write], s.Op[metrics.Read], s.Op[metrics.Flush]
	if w.Count != writes || w.Bytes != writes*4096 || w.Errors != 0 || w.Latency.Count() != writes {
		t.Errorf("writes %+v", w)
	}
	if r.Count != 2 || r.Bytes != 8192 || r.Errors != 1 {
		t.Errorf("reads %+v", r)
	}
	if f.Count != 1 || f.Bytes != 0 {
		t.Errorf("flushes %+v", f)
	}
	if s.Started != writes+3 || s.Inflight() != 0 {
		t.Errorf("started %d inflight %d", s.Started, s.Inflight())
	}
}

// TestQueueMetricsLatency: a request completed by another goroutine after
// a delay has that delay in its latency (the queue reads the clock when
// its wait returns and before it commits).
func TestQueueMetricsLatency(t *testing.T) {
	fk := newFakeKernel(t, 4)
	wait := runQueue(t, fk, &sleepTarget{NullTarget{Size: 1 << 20, BlockSize: 512}}, 4, 64<<10, false)
	for i := range 3 {
		fk.send(t, uint64(1+i), opRead, 0, 0, 8, nil)
		select {
		case <-fk.commits:
		case <-time.After(5 * time.Second):
			t.Fatal("missing commit")
		}
	}
	r := wait().io.Snapshot().Op[metrics.Read]
	if r.Count != 3 || r.Latency.SumNs < 3*uint64(2*time.Millisecond) || r.Latency.Counts[0] != 0 {
		t.Fatalf("reads %+v: want 3 of at least 2ms", r)
	}
}

// sleepTarget completes every request 2 ms later from another goroutine.
type sleepTarget struct{ NullTarget }

func (s *sleepTarget) NewQueue(q *QueueContext) (QueueHandler, error) { return &sleepQueue{q: q}, nil }

type sleepQueue struct {
	q  *QueueContext
	wg sync.WaitGroup
}

func (h *sleepQueue) Handle(r *Request) {
	tag := r.Tag
	h.wg.Add(1)
	time.AfterFunc(2*time.Millisecond, func() { defer h.wg.Done(); h.q.Complete(tag, 0) })
}
func (h *sleepQueue) Close() { h.wg.Wait() }
