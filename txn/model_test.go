package txn

import (
	"encoding/binary"
	"syscall"
	"testing"

	"pgregory.net/rapid"

	"github.com/dst-dev/dst/internal/wire"
)

// This file checks the engine against a model of the whole system: the
// Engine itself, a simulated network that loses everything in flight when
// a connection is cut, and a model exporter that follows PROTOCOL.md §5
// (record of executing/done ids, floor, ESTALE, fencing on resume, replies
// on the current connection, operations completing in any order). rapid
// picks the interleaving of every event. The properties are the ones the
// transaction model promises: no completion is lost or doubled, the
// in-flight bound holds, no write is applied twice, an old write never
// lands after a newer acknowledged one, and reads return a value the
// history allows.

type simFrame struct {
	req   wire.Request
	value uint64 // payload of a WRITE
}

type simReply struct {
	rep   wire.Reply
	value uint64 // payload of a READ
}

type simConn struct {
	toExp    []simFrame
	toClient []simReply
}

type recEntry struct {
	executing bool
	status    wire.Status
	op        wire.Op
}

type execOp struct {
	req   wire.Request
	value uint64
}

type simExporter struct {
	record  map[uint64]*recEntry
	floor   uint64
	disk    map[uint64]uint64 // block -> version
	applied map[uint64]int    // id -> times applied
	exec    []execOp
	conn    *simConn
}

type simReq struct {
	op        wire.Op
	block     uint64
	version   uint64 // write: version written; read: value returned
	buf       []byte
	done      bool
	err       syscall.Errno
	id        uint64
	minVer    uint64 // read: last acked version when submitted
	submitted uint64
}

type sim struct {
	t        *rapid.T
	cfg      Config
	e        *Engine
	x        *simExporter
	limit    int
	reqs     map[Handle]*simReq
	next     Handle
	dialing  bool
	blocks   uint64
	writing  map[uint64]bool   // block has a write in flight
	lastVer  map[uint64]uint64 // block -> last version submitted
	acked    map[uint64]uint64 // block -> highest version acknowledged
	idOf     map[uint64]Handle // id -> handle (ids are never reused)
	ops, eio int
}

func newSim(t *rapid.T) *sim {
	cfg := Config{
		Capacity:   rapid.IntRange(2, 16).Draw(t, "capacity"),
		Timeout:    uint64(rapid.IntRange(1, 8).Draw(t, "timeout")),
		Retries:    rapid.IntRange(0, 5).Draw(t, "retries"),
		Ping:       uint64(rapid.IntRange(1, 6).Draw(t, "ping")),
		BackoffMin: 1, BackoffMax: 4,
	}
	return &sim{
		t: t, cfg: cfg, e: New(cfg), limit: rapid.IntRange(1, 8).Draw(t, "maxInflight"),
		x:    &simExporter{record: map[uint64]*recEntry{}, disk: map[uint64]uint64{}, applied: map[uint64]int{}},
		reqs: map[Handle]*simReq{}, blocks: uint64(rapid.IntRange(1, 4).Draw(t, "blocks")),
		writing: map[uint64]bool{}, lastVer: map[uint64]uint64{}, acked: map[uint64]uint64{}, idOf: map[uint64]Handle{},
	}
}

// send carries out Ready: frames go on the current connection at once.
func (s *sim) send() {
	for s.e.HasReady() {
		rd := s.e.Ready()
		for _, x := range rd.Send {
			r, err := wire.ParseRequest(x.Header[:], 0)
			if err != nil {
				s.t.Fatalf("engine produced a bad header: %v", err)
			}
			if h, ok := s.idOf[r.ID]; ok && h != x.Handle {
				s.t.Fatalf("id %d reused for another request", r.ID)
			}
			s.idOf[r.ID] = x.Handle
			if q := s.reqs[x.Handle]; q.id != 0 && q.id != r.ID {
				s.t.Fatalf("request renumbered from %d to %d", q.id, r.ID)
			} else {
				q.id = r.ID
			}
			f := simFrame{req: r}
			if r.Op == wire.OpWrite {
				f.value = binary.LittleEndian.Uint64(x.Buf)
			}
			if s.x.conn != nil {
				s.x.conn.toExp = append(s.x.conn.toExp, f)
			}
		}
		if rd.Ping && s.x.conn != nil {
			s.x.conn.toExp = append(s.x.conn.toExp, simFrame{req: wire.Request{Op: wire.OpPing, ID: rd.PingID}})
		}
		if rd.Dial {
			s.dialing = true
		}
		closeConn := rd.CloseConn
		s.e.Advance()
		if closeConn {
			s.cut()
		}
		if rd.Dial || closeConn {
			break
		}
	}
	s.collect()
}

func (s *sim) cut() {
	s.x.conn = nil // both directions lose what they carry
	s.e.ConnDown()
}

// collect checks completions against the history.
func (s *sim) collect() {
	for _, c := range s.e.TakeCompletions(nil) {
		q := s.reqs[c.Handle]
		if q == nil || q.done {
			s.t.Fatalf("completion for handle %d: unknown or twice", c.Handle)
		}
		q.done, q.err = true, c.Err
		if c.Err == syscall.EIO {
			s.eio++
		} else if c.Err != 0 {
			s.t.Fatalf("request %d failed with %v", c.Handle, c.Err)
		}
		switch q.op {
		case wire.OpWrite:
			s.writing[q.block] = false
			if c.Err == 0 && q.version > s.acked[q.block] {
				s.acked[q.block] = q.version
			}
		case wire.OpRead:
			if c.Err == 0 {
				v := binary.LittleEndian.Uint64(q.buf)
				if v < q.minVer || v > s.lastVer[q.block] {
					s.t.Fatalf("read of block %d returned version %d; acked %d when submitted, %d written since", q.block, v, q.minVer, s.lastVer[q.block])
				}
			}
		}
	}
	if s.e.State() == Up && s.e.sent > s.e.maxInflight {
		s.t.Fatalf("%d in flight over a limit of %d", s.e.sent, s.e.maxInflight)
	}
}

func (s *sim) submit(t *rapid.T) {
	if s.e.Inflight() >= s.cfg.Capacity {
		return
	}
	block := rapid.Uint64Range(0, s.blocks-1).Draw(t, "block")
	q := &simReq{block: block, buf: make([]byte, 8), submitted: s.e.Now()}
	if !s.writing[block] && rapid.Bool().Draw(t, "write") {
		// The block layer never has two writes to one block in flight.
		s.lastVer[block]++
		q.op, q.version = wire.OpWrite, s.lastVer[block]
		binary.LittleEndian.PutUint64(q.buf, q.version)
		s.writing[block] = true
	} else {
		q.op, q.minVer = wire.OpRead, s.acked[block]
	}
	h := s.next
	s.next++
	s.reqs[h] = q
	s.ops++
	if !s.e.Submit(h, q.op, 0, block*8, 8, q.buf) {
		s.t.Fatal("table full below capacity")
	}
}

// exporterRead: the exporter reads one frame from the current connection.
func (s *sim) exporterRead() {
	c := s.x.conn
	if c == nil || len(c.toExp) == 0 {
		return
	}
	f := c.toExp[0]
	c.toExp = c.toExp[1:]
	r := f.req
	switch r.Op {
	case wire.OpPing:
		c.toClient = append(c.toClient, simReply{rep: wire.Reply{Op: wire.OpPing, ID: r.ID}})
		return
	}
	if r.Floor > s.x.floor {
		for id := range s.x.record {
			if id < r.Floor {
				delete(s.x.record, id)
			}
		}
		s.x.floor = r.Floor
	}
	if r.ID < s.x.floor {
		c.toClient = append(c.toClient, simReply{rep: wire.Reply{Op: r.Op, ID: r.ID, Status: wire.Status(syscall.ESTALE)}})
		return
	}
	if e, ok := s.x.record[r.ID]; ok {
		if e.executing {
			return // rule 1: the first copy answers
		}
		if e.op != wire.OpRead {
			c.toClient = append(c.toClient, simReply{rep: wire.Reply{Op: r.Op, ID: r.ID, Status: e.status}})
			return // rule 2
		}
	}
	s.x.record[r.ID] = &recEntry{executing: true, op: r.Op}
	s.x.exec = append(s.x.exec, execOp{req: r, value: f.value})
}

// exporterComplete: one executing operation finishes (any of them).
func (s *sim) exporterComplete(t *rapid.T) {
	if len(s.x.exec) == 0 {
		return
	}
	i := rapid.IntRange(0, len(s.x.exec)-1).Draw(t, "op")
	o := s.x.exec[i]
	s.x.exec = append(s.x.exec[:i], s.x.exec[i+1:]...)
	block := o.req.Offset / 8
	rep := simReply{rep: wire.Reply{Op: o.req.Op, ID: o.req.ID}}
	switch o.req.Op {
	case wire.OpWrite:
		s.x.applied[o.req.ID]++
		if s.x.applied[o.req.ID] > 1 {
			s.t.Fatalf("write id %d applied twice", o.req.ID)
		}
		if o.value < s.acked[block] {
			s.t.Fatalf("block %d: old write of version %d landed after version %d was acknowledged", block, o.value, s.acked[block])
		}
		s.x.disk[block] = o.value
	case wire.OpRead:
		rep.value = s.x.disk[block]
		rep.rep.Length = 8
	}
	if e := s.x.record[o.req.ID]; e != nil {
		e.executing = false
	}
	if s.x.conn != nil {
		s.x.conn.toClient = append(s.x.conn.toClient, rep)
	}
}

// deliver: the client reads one reply, as the driver does.
func (s *sim) deliver() {
	c := s.x.conn
	if c == nil || len(c.toClient) == 0 {
		return
	}
	r := c.toClient[0]
	c.toClient = c.toClient[1:]
	if r.rep.Op == wire.OpRead && r.rep.Status == 0 {
		if buf := s.e.Receiving(r.rep.ID, r.rep.Length); buf != nil {
			binary.LittleEndian.PutUint64(buf, r.value)
		}
	}
	s.e.Step(r.rep)
	s.collect()
}

func (s *sim) dial(t *rapid.T) {
	if !s.dialing {
		return
	}
	s.dialing = false
	if rapid.IntRange(0, 3).Draw(t, "dialFails") == 0 {
		s.e.DialFailed()
		return
	}
	// A resume: the previous connection, if the exporter still had one,
	// is fenced — what it still carried is never read.
	s.x.conn = &simConn{}
	s.e.ConnUp(s.limit)
}

func TestModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := newSim(t)
		s.send()
		t.Repeat(map[string]func(*rapid.T){
			"submit":   func(t *rapid.T) { s.submit(t); s.send() },
			"send":     func(t *rapid.T) { s.send() },
			"read":     func(t *rapid.T) { s.exporterRead() },
			"complete": func(t *rapid.T) { s.exporterComplete(t); s.send() },
			"deliver":  func(t *rapid.T) { s.deliver(); s.send() },
			"tick": func(t *rapid.T) {
				// Time passes more slowly than events happen, or nearly
				// everything would time out.
				if rapid.IntRange(0, 5).Draw(t, "tickSkip") == 0 {
					s.e.Tick()
					s.send()
				}
			},
			"dial": func(t *rapid.T) { s.dial(t); s.send() },
			"cut": func(t *rapid.T) {
				if s.e.State() == Up && rapid.IntRange(0, 2).Draw(t, "cutSkip") == 0 {
					s.cut()
					s.send()
				}
			},
			"": func(t *rapid.T) { s.collect() },
		})
		// Heal: a good connection, everything delivered, time passes.
		for round := 0; round < 200 && s.pending() > 0; round++ {
			s.dial(t)
			for s.x.conn != nil && (len(s.x.conn.toExp) > 0 || len(s.x.exec) > 0 || len(s.x.conn.toClient) > 0) {
				s.exporterRead()
				if len(s.x.exec) > 0 {
					s.exporterComplete(t)
				}
				s.deliver()
				s.send()
			}
			s.e.Tick()
			s.send()
		}
		if n := s.pending(); n > 0 {
			t.Fatalf("%d requests never completed", n)
		}
		modelTotals.runs++
		modelTotals.ops += s.ops
		modelTotals.eio += s.eio
		modelTotals.reconnects += int(s.e.Stats().Reconnects)
		modelTotals.resent += int(s.e.Stats().Resent)
	})
	t.Logf("%d runs: %d requests (%d failed with EIO after their retries), %d reconnects, %d resends",
		modelTotals.runs, modelTotals.ops, modelTotals.eio, modelTotals.reconnects, modelTotals.resent)
}

var modelTotals struct{ runs, ops, eio, reconnects, resent int }

func (s *sim) pending() int {
	n := 0
	for _, q := range s.reqs {
		if !q.done {
			n++
		}
	}
	return n
}
