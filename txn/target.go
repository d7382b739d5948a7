package txn

import (
	"fmt"
	"syscall"

	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/ublk"
)

// Target serves a ublk device from a remote export: every block request
// becomes a transaction of the Client. Payloads move between the ublk tag
// buffer and the socket without copies: writes go out with writev from the
// tag buffer, read replies are read straight into it.
type Target struct {
	c      *Client
	queues []*ublk.QueueContext
}

// NewTarget wraps a connected client. Queue contexts are registered as the
// device creates its queues; completions are routed to them by handle.
func NewTarget(c *Client, nrQueues int) *Target {
	t := &Target{c: c, queues: make([]*ublk.QueueContext, nrQueues)}
	c.SetDeliver(t.deliver)
	return t
}

func (t *Target) deliver(comps []Completion) {
	for _, cp := range comps {
		q := t.queues[cp.Handle>>16]
		q.Complete(uint16(cp.Handle), cp.Err)
	}
}

// Geometry implements ublk.Target from the exporter's WELCOME.
func (t *Target) Geometry() ublk.Geometry {
	w := t.c.Welcome()
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

// NewQueue implements ublk.Target.
func (t *Target) NewQueue(q *ublk.QueueContext) (ublk.QueueHandler, error) {
	if int(q.ID) >= len(t.queues) {
		return nil, fmt.Errorf("queue %d beyond the %d the target was made for", q.ID, len(t.queues))
	}
	t.queues[q.ID] = q
	return &remoteQueue{t: t, q: q}, nil
}

// Close implements ublk.Target; the client is closed by its owner.
func (t *Target) Close() error { return nil }

// Describe implements ublk.Target.
func (t *Target) Describe() string { return "remote " + t.c.URL().String() }

type remoteQueue struct {
	t *Target
	q *ublk.QueueContext
}

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
	h.t.c.Enqueue(Handle(uint32(r.Queue)<<16|uint32(r.Tag)), op, flags, off, length, r.Buf)
}

// Flush sends the batch the queue just handed over (ublk.Flusher).
func (h *remoteQueue) Flush() { h.t.c.Flush() }

func (h *remoteQueue) Close() {}
