package txn

import (
	"context"
	"fmt"
	"sync"
	"syscall"

	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/internal/uring"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
	"github.com/dst-dev/dst/ublk"
)

// Target serves a ublk device from a remote export. Each hardware queue
// has its own connection and session, driven on the queue's own ring by a
// Conn: the queue goroutine fetches a request, sends it (writev straight
// from the tag buffer), receives the reply (READ data straight into the
// tag buffer) and commits it, with no other goroutine involved.
type Target struct {
	d       *dialer
	welcome *wire.Welcome
	// nbdFlags: what an NBD server announced (NBD mode only)
	nbdFlags nbd.TransmissionFlags

	mu    sync.Mutex
	first *link // the connection Dial made, for queue 0
	conns []*Conn
	state []ConnState
}

// DialTarget connects to the export once, to learn its geometry and to
// report a refusal or a bad URL before any device exists.
func DialTarget(ctx context.Context, opts Options) (*Target, error) {
	d, err := newDialer(opts)
	if err != nil {
		return nil, err
	}
	l, err := d.handshake(ctx, d.resume(0))
	if err != nil {
		return nil, err
	}
	d.first = l.w
	return &Target{d: d, welcome: l.w, first: l, nbdFlags: l.nbdFlags}, nil
}

// NBD reports whether the export is on an NBD server, and what the
// server announced about it.
func (t *Target) NBD() (bool, nbd.TransmissionFlags) { return t.d.nbd != nil, t.nbdFlags }

// Resumed reports whether the first connection resumed the session it was
// given in Options.Sessions[0].
func (t *Target) Resumed() bool { return t.welcome.Resumed }

// Welcome returns what the exporter announced.
func (t *Target) Welcome() *wire.Welcome { return t.welcome }

// URL returns the export URL.
func (t *Target) URL() *transport.URL { return t.d.url }

// Geometry implements ublk.Target from the exporter's WELCOME.
func (t *Target) Geometry() ublk.Geometry {
	w := t.welcome
	return ublk.Geometry{
		Size:                w.Size,
		LogicalBlockSize:    w.LogicalBlock,
		PhysicalBlockSize:   w.PhysicalBlock,
		MaxIOBytes:          w.MaxTransfer,
		ReadOnly:            w.ReadOnly,
		VolatileCache:       w.Features&wire.FeatFlush != 0,
		FUA:                 w.Features&wire.FeatFUA != 0,
		Discard:             w.Features&wire.FeatDiscard != 0,
		WriteZeroes:         w.Features&wire.FeatWriteZeroes != 0,
		DiscardGranularity:  w.DiscardGranularity,
		MaxDiscardBytes:     1<<32 - uint64(w.LogicalBlock),
		MaxWriteZeroesBytes: 1<<32 - uint64(w.LogicalBlock),
	}
}

// NewQueue implements ublk.Target: a Conn on the queue's ring.
func (t *Target) NewQueue(q *ublk.QueueContext) (ublk.QueueHandler, error) {
	h := &remoteQueue{q: q}
	d := *t.d
	idx := 0
	d.opts.OnState = func(s ConnState) { t.setState(idx, s) }
	t.mu.Lock()
	idx = len(t.conns)
	first := t.first
	t.first = nil
	h.c = newConn(q, &d, h.deliver)
	h.c.session = d.resume(idx)
	if cb := t.d.opts.OnSession; cb != nil {
		h.c.onSession = func(tok wire.Token) { cb(idx, tok) }
	}
	t.conns = append(t.conns, h.c)
	t.state = append(t.state, Down)
	t.mu.Unlock()
	if err := h.c.Start(first); err != nil {
		return nil, fmt.Errorf("queue %d: %w", q.ID, err)
	}
	return h, nil
}

func (t *Target) setState(i int, s ConnState) {
	t.mu.Lock()
	t.state[i] = s
	all := t.aggregate()
	cb := t.d.opts.OnState
	t.mu.Unlock()
	if cb != nil {
		cb(all)
	}
}

// aggregate is the worst state over the queues' connections.
func (t *Target) aggregate() ConnState {
	all := Up
	for _, s := range t.state {
		if s != Up {
			all = s
		}
	}
	return all
}

// Stats sums the counters of every queue's connection.
func (t *Target) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	var s Stats
	for _, c := range t.conns {
		x := c.Stats()
		s.Submitted += x.Submitted
		s.Completed += x.Completed
		s.Failed += x.Failed
		s.Resent += x.Resent
		s.Timeouts += x.Timeouts
		s.Reconnects += x.Reconnects
		s.PingsSent += x.PingsSent
		s.Corrupt += x.Corrupt
	}
	return s
}

// State is the worst connection state over the queues (Up when every
// queue's connection is up).
func (t *Target) State() ConnState {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.aggregate()
}

// Close implements ublk.Target (the queues have closed their Conns).
func (t *Target) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.first != nil {
		t.first.nc.Close()
		t.first = nil
	}
	return nil
}

// Describe implements ublk.Target.
func (t *Target) Describe() string { return "remote " + t.d.url.String() }

type remoteQueue struct {
	q *ublk.QueueContext
	c *Conn
}

func (h *remoteQueue) deliver(hd Handle, err syscall.Errno) { h.q.Complete(uint16(hd), err) }

func (h *remoteQueue) Handle(r *ublk.Request) {
	var op wire.Op
	switch r.Op {
	case ublk.OpRead:
		op = wire.OpRead
	case ublk.OpWrite:
		op = wire.OpWrite
	case ublk.OpFlush:
		op = wire.OpFlush
	case ublk.OpDiscard:
		op = wire.OpDiscard
	case ublk.OpWriteZeroes:
		op = wire.OpWriteZeroes
	default:
		h.q.Complete(r.Tag, syscall.EOPNOTSUPP)
		return
	}
	var flags wire.Flags
	if r.Flags&ublk.FlagFUA != 0 && op == wire.OpWrite {
		flags |= wire.FlagFUA
	}
	if r.Flags&ublk.FlagNoUnmap != 0 && op == wire.OpWriteZeroes {
		flags |= wire.FlagNoUnmap
	}
	off, length := r.Offset, r.Length
	if op == wire.OpFlush {
		off, length = 0, 0 // the protocol wants a bare FLUSH
	}
	h.c.Submit(Handle(r.Tag), op, flags, off, length, r.Buf)
}

func (h *remoteQueue) HandleCQE(c *uring.CQE) { h.c.HandleCQE(ublk.FromUserData(c.UserData), c.Res) }
func (h *remoteQueue) Flush()                 { h.c.Poll() }
func (h *remoteQueue) Inflight() int          { return h.c.Inflight() }
func (h *remoteQueue) Stop()                  { h.c.Stop() }
func (h *remoteQueue) Close()                 { h.c.Close() }
