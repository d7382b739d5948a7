package txn

import (
	"encoding/binary"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/dst-dev/dst/internal/wire"
)

// TestFirstID: an engine with a FirstID numbers its transactions above it,
// strictly increasing, and its floor starts there too.
func TestFirstID(t *testing.T) {
	for _, epoch := range []uint16{0, 1, 7, MaxEpoch} {
		first := EpochFirstID(epoch)
		e := New(Config{Capacity: 4, Timeout: 10, Ping: 10, FirstID: first})
		if e.Floor() != first+1 {
			t.Fatalf("epoch %d: floor %d, want %d", epoch, e.Floor(), first+1)
		}
		e.Ready()
		e.Advance()
		e.ConnUp(4)
		last := first
		for i := range 10 {
			if !e.Submit(Handle(i), wire.OpRead, 0, 0, 512, make([]byte, 512)) {
				t.Fatal("table full")
			}
			rd := e.Ready()
			if len(rd.Send) != 1 {
				t.Fatalf("epoch %d: %d frames to send", epoch, len(rd.Send))
			}
			x := rd.Send[0]
			r, err := wire.ParseRequest(x.Header[:], 0)
			if err != nil {
				t.Fatal(err)
			}
			if r.ID <= last || r.ID>>EpochShift != uint64(epoch) || r.Floor <= first || r.ID&PingBit != 0 {
				t.Fatalf("epoch %d: id %#x after %#x, floor %#x", epoch, r.ID, last, r.Floor)
			}
			last = r.ID
			e.Advance()
			buf := e.Receiving(r.ID, 512)
			if buf == nil {
				t.Fatalf("id %#x not found for its reply", r.ID)
			}
			e.Step(wire.Reply{Op: wire.OpRead, ID: r.ID, Length: 512})
			if c := e.TakeCompletions(nil); len(c) != 1 || c[0].Handle != Handle(i) || c[0].Err != 0 {
				t.Fatalf("completions %v", c)
			}
		}
		if e.Floor() != last+1 {
			t.Fatalf("floor %#x after completing up to %#x", e.Floor(), last)
		}
	}
	if EpochFirstID(1) <= 1<<40 || EpochFirstID(MaxEpoch)&PingBit != 0 || EpochFirstID(MaxEpoch+5) != EpochFirstID(MaxEpoch) {
		t.Fatal("epoch layout")
	}
}

// recoverySim adds daemon crashes (dst recover) to the model of
// model_test.go: the engine vanishes with everything it held, a new engine
// of the next epoch takes the session over (the exporter keeps its record
// and its executing operations), and the block layer reissues every
// request that had not completed, under new ids (the kernel's
// USER_RECOVERY_REISSUE). With barrier set, the model exporter gives the
// guarantee recovery asks of the exporter: after a resume, requests of the
// new connection are not executed until every operation the session was
// executing has completed.
type recoverySim struct {
	*sim
	epoch    uint16
	barrier  bool
	oldExec  []uint64 // ids executing when the daemon died
	reissued int
}

// blocked reports whether the barrier still holds back the new connection.
func (r *recoverySim) blocked() bool {
	r.oldExec = slices.DeleteFunc(r.oldExec, func(id uint64) bool {
		return !slices.ContainsFunc(r.x.exec, func(o execOp) bool { return o.req.ID == id })
	})
	return r.barrier && len(r.oldExec) > 0
}

func (r *recoverySim) read() {
	if !r.blocked() {
		r.exporterRead()
	}
}

func (r *recoverySim) crash() {
	r.epoch++
	// The daemon dies and its socket with it (what it carried is lost),
	// and its engine with everything it had not completed.
	r.x.conn = nil
	r.dialing = false
	for _, o := range r.x.exec {
		r.oldExec = append(r.oldExec, o.req.ID)
	}
	cfg := r.cfg
	cfg.FirstID = EpochFirstID(r.epoch)
	r.e = New(cfg)
	handles := make([]Handle, 0, len(r.reqs))
	for h, q := range r.reqs {
		if !q.done {
			handles = append(handles, h)
		}
	}
	slices.Sort(handles)
	for _, h := range handles {
		q := r.reqs[h]
		q.id = 0 // a new request for the new daemon
		r.reissued++
		if !r.e.Submit(h, q.op, 0, q.block*8, 8, q.buf) {
			r.t.Fatal("table full on reissue")
		}
	}
	r.send()
}

// TestModelRecovery: with the exporter's barrier, the properties of
// TestModel hold across daemon crashes, and no id of an old epoch is sent
// again.
func TestModelRecovery(t *testing.T) {
	var crashes, reissued int
	rapid.Check(t, func(t *rapid.T) {
		r := &recoverySim{sim: newSim(t), barrier: true}
		// No request fails after its retries here: a write that failed
		// with EIO may still land later, recovery or not (the block layer
		// has been told the range is undefined), and this test is about
		// what recovery adds.
		r.cfg.Retries = 1 << 20
		r.e = New(r.cfg)
		r.send()
		t.Repeat(map[string]func(*rapid.T){
			"submit":   func(t *rapid.T) { r.submit(t); r.send() },
			"send":     func(t *rapid.T) { r.send() },
			"read":     func(t *rapid.T) { r.read() },
			"complete": func(t *rapid.T) { r.exporterComplete(t); r.send() },
			"deliver":  func(t *rapid.T) { r.deliver(); r.send() },
			"tick": func(t *rapid.T) {
				if rapid.IntRange(0, 5).Draw(t, "tickSkip") == 0 {
					r.e.Tick()
					r.send()
				}
			},
			"dial": func(t *rapid.T) { r.dial(t); r.send() },
			"cut": func(t *rapid.T) {
				if r.e.State() == Up && rapid.IntRange(0, 2).Draw(t, "cutSkip") == 0 {
					r.cut()
					r.send()
				}
			},
			"crash": func(t *rapid.T) {
				if r.epoch < 4 && rapid.IntRange(0, 3).Draw(t, "crashSkip") == 0 {
					r.crash()
				}
			},
			"": func(t *rapid.T) { r.collect() },
		})
		for round := 0; round < 300 && r.pending() > 0; round++ {
			r.dial(t)
			for r.x.conn != nil && (len(r.x.conn.toExp) > 0 || len(r.x.exec) > 0 || len(r.x.conn.toClient) > 0) {
				r.read()
				if len(r.x.exec) > 0 {
					r.exporterComplete(t)
				}
				r.deliver()
				r.send()
			}
			r.e.Tick()
			r.send()
		}
		if n := r.pending(); n > 0 {
			t.Fatalf("%d requests never completed", n)
		}
		for id := range r.idOf {
			if id>>EpochShift > uint64(r.epoch) {
				t.Fatalf("id %#x beyond epoch %d", id, r.epoch)
			}
		}
		crashes += int(r.epoch)
		reissued += r.reissued
	})
	t.Logf("%d crashes, %d requests reissued", crashes, reissued)
}

// TestRecoveryNeedsExporterBarrier spells out why the exporter must hold
// a resumed session's new requests back until its old ones are done: a
// write in flight when the daemon died is still executing; the kernel
// reissues it to the new daemon, which gets it done and acknowledged; the
// application writes the block again, acknowledged too; then the first
// copy lands over the newer data. With the barrier, the reissued write is
// not even read before the first copy has completed.
func TestRecoveryNeedsExporterBarrier(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		for _, barrier := range []bool{false, true} {
			cfg := Config{Capacity: 4, Timeout: 100, Retries: 5, Ping: 100, BackoffMin: 1, BackoffMax: 1}
			r := &recoverySim{barrier: barrier, sim: &sim{
				t: t, cfg: cfg, e: New(cfg), limit: 4, blocks: 1,
				x:    &simExporter{record: map[uint64]*recEntry{}, disk: map[uint64]uint64{}, applied: map[uint64]int{}},
				reqs: map[Handle]*simReq{}, writing: map[uint64]bool{}, lastVer: map[uint64]uint64{},
				acked: map[uint64]uint64{}, idOf: map[uint64]Handle{},
			}}
			connect := func() {
				r.send()
				r.dialing = false
				r.x.conn = &simConn{}
				r.e.ConnUp(r.limit)
				r.send()
			}
			write := func() {
				v := r.lastVer[0] + 1
				r.lastVer[0] = v
				q := &simReq{op: wire.OpWrite, version: v, buf: binary.LittleEndian.AppendUint64(nil, v)}
				r.writing[0] = true
				h := r.next
				r.next++
				r.reqs[h] = q
				r.e.Submit(h, wire.OpWrite, 0, 0, 8, q.buf)
				r.send()
			}
			connect()
			write() // version 1
			r.read()
			first := r.x.exec[0] // executing when the daemon dies
			r.crash()
			connect() // the reissued version 1 goes out under a new id
			r.read()
			if barrier {
				if len(r.x.exec) != 1 || r.x.exec[0].req.ID != first.req.ID {
					t.Fatalf("the barrier let a request of the new connection execute: %v", r.x.exec)
				}
				continue
			}
			// Without it: the reissued copy completes and is acknowledged
			// while the first copy is still executing.
			r.x.exec = slices.DeleteFunc(r.x.exec, func(o execOp) bool { return o.req.ID == first.req.ID })
			r.exporterComplete(t)
			r.deliver()
			write() // version 2, after version 1 was acknowledged
			r.read()
			r.exporterComplete(t)
			r.deliver()
			if r.acked[0] != 2 {
				t.Fatalf("acknowledged version %d, want 2", r.acked[0])
			}
			if first.value >= r.acked[0] {
				t.Fatal("expected the first copy to be older than the acknowledged data")
			}
			// The first copy would land now, over version 2.
		}
	})
}
