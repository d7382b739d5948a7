//go:build linux

package ublk

import (
	"bytes"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countPort counts what the queue asks of the fake kernel.
type countPort struct {
	*fakeKernel
	fetches atomic.Int32 // FETCH_REQ (first fetch of a tag)
	commits atomic.Int32 // COMMIT_AND_FETCH_REQ
	fetched atomic.Int32 // requests the queue received
}

func (c *countPort) prepFetch(q *queue, tag uint16, commit bool, res int32) {
	if commit {
		c.commits.Add(1)
	} else {
		c.fetches.Add(1)
	}
	c.fakeKernel.prepFetch(q, tag, commit, res)
}

func (c *countPort) result(q *queue, tag uint16, res int32) int32 {
	r := c.fakeKernel.result(q, tag, res)
	if r == ioResOK {
		c.fetched.Add(1)
	}
	return r
}

// startQueue runs a queue on port p until it leaves run by itself.
func startQueue(t *testing.T, p port, charFd int, target Target, depth, maxIO int) (*queue, chan struct{}) {
	t.Helper()
	q := newQueue(0, depth, maxIO, false, charFd, 0)
	q.port = p
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
	t.Cleanup(func() {
		q.requestAbandon()
		<-done
		q.closeWake()
	})
	return q, done
}

// gateTarget serves from a memTarget's memory, but only while open;
// requests that arrive while it is closed are held until release.
type gateTarget struct {
	m      *memTarget
	mu     sync.Mutex
	closed bool
	held   []*Request
	seen   atomic.Int32
	q      *QueueContext
}

func (g *gateTarget) Geometry() Geometry { return g.m.Geometry() }
func (g *gateTarget) Describe() string   { return "gate" }
func (g *gateTarget) Close() error       { return nil }
func (g *gateTarget) NewQueue(q *QueueContext) (QueueHandler, error) {
	g.q = q
	return gateQueue{g}, nil
}

type gateQueue struct{ g *gateTarget }

func (h gateQueue) Handle(r *Request) { h.g.handle(r) }
func (h gateQueue) Close()            {}

func (g *gateTarget) handle(r *Request) {
	g.seen.Add(1)
	g.mu.Lock()
	if g.closed {
		g.held = append(g.held, r)
		g.mu.Unlock()
		return
	}
	g.mu.Unlock()
	g.serve(r)
}

func (g *gateTarget) serve(r *Request) {
	g.m.mu.Lock()
	switch r.Op {
	case OpRead:
		copy(r.Buf, g.m.data[r.Offset:])
	case OpWrite:
		copy(g.m.data[r.Offset:], r.Buf)
	}
	g.m.mu.Unlock()
	g.q.Complete(r.Tag, 0)
}

func (g *gateTarget) setClosed(c bool) {
	g.mu.Lock()
	g.closed = c
	g.mu.Unlock()
}

// release serves the held requests (from another goroutine, as a real
// target would).
func (g *gateTarget) release() {
	g.mu.Lock()
	held := g.held
	g.held = nil
	g.mu.Unlock()
	for _, r := range held {
		g.serve(r)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func collectCommits(fk *fakeKernel) map[uint64]commit {
	got := map[uint64]commit{}
	for {
		select {
		case c := <-fk.commits:
			got[c.id] = c
		default:
			return got
		}
	}
}

// TestQueueDetachFinishesHeldRequests: a detaching queue completes what
// the target holds, leaves what arrives afterwards to the next daemon
// (never started, never committed), and then leaves its loop without the
// kernel aborting anything.
func TestQueueDetachFinishesHeldRequests(t *testing.T) {
	fk := newFakeKernel(t, 8)
	cp := &countPort{fakeKernel: fk}
	g := &gateTarget{m: &memTarget{data: make([]byte, 1<<20)}, closed: true}
	q, done := startQueue(t, cp, int(fk.char.Fd()), g, 8, 4096)
	for id := uint64(1); id <= 3; id++ {
		fk.send(t, id, opRead, 0, id*8, 8, nil)
	}
	waitFor(t, "the target to hold 3 requests", func() bool { return g.seen.Load() == 3 })
	q.requestDetach()
	fk.send(t, 4, opWrite, 0, 0, 8, bytes.Repeat([]byte{4}, 4096))
	fk.send(t, 5, opRead, 0, 0, 8, nil)
	waitFor(t, "the queue to receive 5 requests", func() bool { return cp.fetched.Load() == 5 })
	select {
	case <-done:
		t.Fatal("the queue left while the target still held requests")
	case <-time.After(20 * time.Millisecond):
	}
	g.release()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the detaching queue did not leave after the held requests completed")
	}
	got := collectCommits(fk)
	for id := uint64(1); id <= 3; id++ {
		if c, ok := got[id]; !ok || c.res != 4096 {
			t.Errorf("request %d: commit %+v (present %v), want 4096", id, c, ok)
		}
	}
	for id := uint64(4); id <= 5; id++ {
		if _, ok := got[id]; ok {
			t.Errorf("request %d arrived during the detach and was committed", id)
		}
	}
	if g.seen.Load() != 3 || q.parked != 2 || q.held != 0 {
		t.Fatalf("target saw %d requests, %d parked, %d held; want 3, 2, 0", g.seen.Load(), q.parked, q.held)
	}
	if q.aborted != 0 || q.err != nil {
		t.Fatalf("aborted %d, err %v", q.aborted, q.err)
	}
}

// TestQueueDetachAbandon: past the deadline the queue leaves at once and
// commits nothing, not even what completes later: the kernel reissues all
// of it to the next daemon.
func TestQueueDetachAbandon(t *testing.T) {
	fk := newFakeKernel(t, 4)
	g := &gateTarget{m: &memTarget{data: make([]byte, 1<<20)}, closed: true}
	q, done := startQueue(t, fk, int(fk.char.Fd()), g, 4, 4096)
	for id := uint64(1); id <= 3; id++ {
		fk.send(t, id, opWrite, 0, id*8, 8, bytes.Repeat([]byte{byte(id)}, 4096))
	}
	waitFor(t, "the target to hold 3 requests", func() bool { return g.seen.Load() == 3 })
	q.requestDetach()
	select {
	case <-done:
		t.Fatal("the queue left while the target still held requests")
	case <-time.After(20 * time.Millisecond):
	}
	q.requestAbandon()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("abandon did not end the queue")
	}
	g.release() // completions after the end reach nobody
	time.Sleep(10 * time.Millisecond)
	if got := collectCommits(fk); len(got) != 0 {
		t.Fatalf("an abandoned queue committed %v", got)
	}
	if q.held != 3 {
		t.Fatalf("held %d at the end, want 3", q.held)
	}
}

// TestQueueRefetchAfterRecovery: a daemon dies holding requests (its queue
// is abandoned); the next daemon's queue fetches every tag again and serves
// the requests the kernel reissues, on the same data.
func TestQueueRefetchAfterRecovery(t *testing.T) {
	const depth = 16
	m := &memTarget{data: make([]byte, 1<<20)}
	block := func(i uint64) []byte { return bytes.Repeat([]byte{byte(i), 0xa5}, 2048) }

	// First daemon: 8 writes done, then 2 writes held when it dies.
	fk1 := newFakeKernel(t, depth)
	g := &gateTarget{m: m}
	q1, done1 := startQueue(t, fk1, int(fk1.char.Fd()), g, depth, 4096)
	for i := uint64(1); i <= 8; i++ {
		fk1.send(t, i, opWrite, 0, i*8, 8, block(i))
	}
	waitFor(t, "8 commits", func() bool { return len(fk1.commits) == 8 })
	g.setClosed(true)
	fk1.send(t, 9, opWrite, 0, 9*8, 8, block(9))
	fk1.send(t, 10, opWrite, 0, 10*8, 8, block(10))
	waitFor(t, "the target to hold 2 requests", func() bool { return g.seen.Load() == 10 })
	q1.requestAbandon()
	<-done1
	if got := collectCommits(fk1); len(got) != 8 {
		t.Fatalf("first daemon committed %d requests, want 8", len(got))
	}

	// Second daemon: every tag fetched anew; the reissued writes and
	// reads of everything are served.
	fk2 := newFakeKernel(t, depth)
	cp := &countPort{fakeKernel: fk2}
	_, done2 := startQueue(t, cp, int(fk2.char.Fd()), m, depth, 4096)
	if n := cp.fetches.Load(); n != depth {
		t.Fatalf("the new queue fetched %d tags, want all %d", n, depth)
	}
	fk2.send(t, 109, opWrite, 0, 9*8, 8, block(9))
	fk2.send(t, 110, opWrite, 0, 10*8, 8, block(10))
	waitFor(t, "the reissued writes", func() bool { return len(fk2.commits) == 2 })
	for i := uint64(1); i <= 10; i++ {
		fk2.send(t, 200+i, opRead, 0, i*8, 8, nil)
	}
	waitFor(t, "12 commits", func() bool { return len(fk2.commits) == 12 })
	for id, c := range collectCommits(fk2) {
		if c.res != 4096 {
			t.Errorf("request %d: res %d", id, c.res)
		}
		if id > 200 && !bytes.Equal(c.data, block(id-200)) {
			t.Errorf("read of block %d after recovery returned other data", id-200)
		}
	}
	fk2.pw.Close()
	select {
	case <-done2:
	case <-time.After(5 * time.Second):
		t.Fatal("second queue did not stop")
	}
}

func TestCheckRecoverable(t *testing.T) {
	rec := uint64(FlagUserRecovery | FlagUserRecoveryReissue | FlagCmdIoctlEncode)
	tests := []struct {
		name  string
		info  DevInfo
		want  string // "" = allowed
		isRef bool
	}{
		{"quiesced", DevInfo{DevID: 3, State: StateQuiesced, Flags: rec}, "", false},
		{"fail-io", DevInfo{DevID: 3, State: StateFailIO, Flags: rec}, "", false},
		{"live (daemon dying)", DevInfo{DevID: 3, State: StateLive, Flags: rec}, "", false},
		{"not recoverable", DevInfo{DevID: 3, State: StateLive, Flags: FlagCmdIoctlEncode}, "without --recoverable", true},
		{"dead", DevInfo{DevID: 3, State: StateDead, Flags: rec}, "dead", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckRecoverable(tt.info)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var re *RefusedError
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.As(err, &re) || !strings.Contains(err.Error(), "dst del 3") {
				t.Fatalf("err %v, want a refusal mentioning %q and dst del", err, tt.want)
			}
		})
	}
}

func TestCheckGeometry(t *testing.T) {
	g := Geometry{Size: 64 << 20, LogicalBlockSize: 4096, PhysicalBlockSize: 4096, MaxIOBytes: 1 << 20, Discard: true, WriteZeroes: true}
	_, p, err := buildParams(g, Options{Queues: 1, Depth: 64})
	if err != nil {
		t.Fatal(err)
	}
	info := DevInfo{DevID: 1}
	if err := checkGeometry(info, p, g); err != nil {
		t.Fatalf("same geometry refused: %v", err)
	}
	bad := map[string]func(*Geometry){
		"size":               func(g *Geometry) { g.Size = 32 << 20 },
		"logical block":      func(g *Geometry) { g.LogicalBlockSize = 512 },
		"read-only":          func(g *Geometry) { g.ReadOnly = true },
		"largest request":    func(g *Geometry) { g.MaxIOBytes = 64 << 10 },
		"advertises discard": func(g *Geometry) { g.Discard = false },
		"write-zeroes":       func(g *Geometry) { g.WriteZeroes = false },
	}
	for want, f := range bad {
		g2 := g
		f(&g2)
		err := checkGeometry(info, p, g2)
		var re *RefusedError
		if err == nil || !errors.As(err, &re) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s changed: %v", want, err)
		}
	}
	// The kernel's 512-byte default when the target says 0.
	g512 := Geometry{Size: 1 << 20}
	_, p512, _ := buildParams(g512, Options{Queues: 1, Depth: 1})
	if err := checkGeometry(info, p512, g512); err != nil {
		t.Fatal(err)
	}
}
