package export

import (
	"time"

	"github.com/dst-dev/dst/internal/backend"
)

// Executing ops
//
// An op that dispatch recorded executing runs on the ring of the
// connection that read it: backend Prep fills an SQE whose user data
// names the op's slot, the CQE goes through backend Result, and finish
// records the status and routes the reply. Three detours:
//
//   - memory files (tmpfs, ramfs; see backend.InlineCopies): reads, writes and
//     flushes run inline on the loop, as copies through a mapping of the
//     file (or pread/pwrite), because io_uring would hand each of them to
//     an io-wq thread and back;
//   - StepSync (backend.NeedsSync, a short transfer, EAGAIN...): the op
//     goes to a sync helper goroutine (at most syncHelpers per connection,
//     started on first use) whose result comes back through the xqueue;
//   - the test hold (Server.Hold): the op is parked until the hold ends.
//
// Every op counts in c.ops from execute to finish; the loop does not end
// while it is non-zero.

// syncHelpers bounds the sync helper goroutines of one connection.
const syncHelpers = 4

func (c *conn) execute(o *op) {
	c.ops++
	c.srv.executing.Add(1)
	if c.srv.hold.Load() {
		c.parked = append(c.parked, o)
		return
	}
	c.start(o)
}

func (c *conn) unpark() {
	for i, o := range c.parked {
		c.parked[i] = nil
		c.start(o)
	}
	c.parked = c.parked[:0]
}

func (c *conn) start(o *op) {
	f := c.exp.file
	if c.exp.inline && c.srv.cfg.ioDelay == 0 && c.startInline(o) {
		return
	}
	if f.NeedsSync(o.bop, o.bflags) || c.srv.cfg.ioDelay > 0 {
		c.toHelper(o)
		return
	}
	slot := c.slots.put(o)
	s := c.getSQE()
	f.Prep(s, o.bop, o.bflags, o.off, o.data(), o.length)
	s.SetUserData(kindDisk<<kindShift | uint64(slot))
}

func (c *conn) onDisk(slot uint32, res int32) {
	o := c.slots.take(slot)
	step, err := c.exp.file.Result(o.bop, o.bflags, o.off, o.length, res)
	if step == backend.StepSync {
		c.toHelper(o)
		return
	}
	c.finish(o, err)
}

// startInline serves o on a memory file if it is a read, write or flush,
// and reports whether it did. Before a discard or write-zeroes it forgets
// that the range holds data.
func (c *conn) startInline(o *op) bool {
	m := c.exp.mem
	switch o.bop {
	case backend.OpRead:
		if m != nil && m.IsData(o.off, o.length) && m.CopyOut(o.data(), o.off) {
			c.finish(o, nil)
			return true
		}
	case backend.OpWrite:
		// FUA needs nothing more: a memory filesystem has no cache to
		// flush.
		if m != nil && m.CopyIn(o.off, o.data()) {
			m.SetData(o.off, o.length)
			c.finish(o, nil)
			return true
		}
	case backend.OpFlush: // fdatasync: a no-op on a memory filesystem
	default:
		if m != nil {
			m.ClearData(o.off, o.length)
		}
		return false
	}
	// pread, pwrite (which also report why a copy faulted), fdatasync.
	c.finish(o, c.exp.file.Sync(o.bop, o.bflags, o.off, o.data(), o.length))
	return true
}

// toHelper hands o to a sync helper, starting one when every running one
// is busy and the bound allows. The channel holds every op the connection
// can have executing (MaxInflight), so the send never blocks.
func (c *conn) toHelper(o *op) {
	if c.syncQ == nil {
		c.syncQ = make(chan *op, c.maxInflight)
	}
	c.syncBusy++
	if c.syncBusy > c.helpers && c.helpers < syncHelpers {
		c.helpers++
		c.syncWG.Add(1)
		go c.helper()
	}
	c.syncQ <- o
}

func (c *conn) helper() {
	defer c.syncWG.Done()
	f := c.exp.file
	for o := range c.syncQ {
		if d := c.srv.cfg.ioDelay; d > 0 {
			time.Sleep(d)
		}
		o.err = f.Sync(o.bop, o.bflags, o.off, o.data(), o.length)
		// The loop does not end while the op is outstanding, so the
		// queue is open.
		c.x.push(xevent{kind: evSync, o: o})
	}
}
