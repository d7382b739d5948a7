package ublk

import "fmt"

// NullTarget completes every request at once, from inside Handle: reads
// return zeroes, writes are dropped. It is the speed baseline: everything it
// costs is the ublk round trip itself.
type NullTarget struct {
	Size      uint64
	BlockSize uint32 // logical block size, 512 or 4096
}

// Geometry implements Target.
func (t *NullTarget) Geometry() Geometry {
	return Geometry{
		Size:              t.Size,
		LogicalBlockSize:  t.BlockSize,
		PhysicalBlockSize: t.BlockSize,
		Discard:           true,
		WriteZeroes:       true,
	}
}

// NewQueue implements Target.
func (t *NullTarget) NewQueue(q *QueueContext) (QueueHandler, error) { return nullQueue{q}, nil }

// Close implements Target.
func (t *NullTarget) Close() error { return nil }

// Describe implements Target.
func (t *NullTarget) Describe() string { return fmt.Sprintf("null %d bytes", t.Size) }

type nullQueue struct{ q *QueueContext }

func (n nullQueue) Handle(r *Request) {
	if r.Op == OpRead {
		clear(r.Buf)
	}
	n.q.Complete(r.Tag, 0)
}

func (n nullQueue) Close() {}
