package txn

import "github.com/dst-dev/dst/internal/wire"

// Handle identifies the block request behind a transaction for whoever
// submitted it (the ublk target packs queue and tag into it). The engine
// gives it back with the completion and never interprets it.
type Handle uint32

// Txn is one transaction: a block request on its way to the exporter.
// Txns live in the engine's table, allocated once; the engine hands out
// pointers in Ready.Send, valid until Advance.
type Txn struct {
	ID     uint64
	Op     wire.Op
	Flags  wire.Flags
	Offset uint64
	Length uint32
	// Buf is the payload: the data to send for a WRITE, the destination of a
	// READ. It belongs to the submitter, who keeps it untouched until the
	// completion.
	Buf    []byte
	Handle Handle
	// Header is the encoded request header, filled when the txn is handed
	// out for sending (Floor changes between sends).
	Header [wire.RequestHeaderSize]byte
	// Trailer holds the frame's trailer (PROTOCOL.md §8.5) when the
	// connection has crypto: sealed with the header at each send.
	Trailer [32]byte

	state    txnState
	tries    int    // timeouts so far: each uses up one attempt
	sends    int    // times handed out for sending
	deadline uint64 // tick at which the current attempt times out
	inSend   bool   // handed out in Ready.Send and not yet Advanced
	recv     bool   // a READ reply payload is being read into Buf
	result   wire.Status
	deferred bool // completed while inSend/recv: complete at Advance/Step
}

type txnState uint8

const (
	stFree    txnState = iota
	stPending          // waiting to be (re)sent
	stSent             // sent on the current connection, no reply yet
)

// table holds transactions by id: slot = id & mask. Ids increase
// strictly; an id whose slot is still taken by an old transaction is
// skipped, so lookups are one index and one compare.
type table struct {
	slots []Txn
	mask  uint64
	next  uint64 // next id to try
	floor uint64 // every id below has completed
	used  int
}

func newTable(capacity int) *table {
	n := 1
	for n < capacity {
		n <<= 1
	}
	return &table{slots: make([]Txn, n), mask: uint64(n - 1), next: 1, floor: 1}
}

func (t *table) capacity() int { return len(t.slots) }

func (t *table) full() bool { return t.used == len(t.slots) }

// alloc takes a free slot with a fresh id; nil when the table is full.
func (t *table) alloc() *Txn {
	if t.full() {
		return nil
	}
	for {
		id := t.next
		t.next++
		s := &t.slots[id&t.mask]
		if s.state == stFree {
			*s = Txn{ID: id, state: stPending}
			t.used++
			return s
		}
	}
}

// get returns the live transaction with id, or nil.
func (t *table) get(id uint64) *Txn {
	s := &t.slots[id&t.mask]
	if s.state == stFree || s.ID != id {
		return nil
	}
	return s
}

// free releases x and moves the floor past completed ids.
func (t *table) free(x *Txn) {
	x.state = stFree
	x.Buf = nil
	t.used--
	for t.floor < t.next {
		s := &t.slots[t.floor&t.mask]
		if s.state != stFree && s.ID == t.floor {
			break
		}
		t.floor++
	}
}

// fifo is a queue of transactions waiting to be sent. An entry remembers
// the id it was queued for: a transaction completed while queued leaves a
// stale entry (its slot free or reused by a later id) that is skipped.
type fifo struct {
	buf        []entry
	head, size int
}

type entry struct {
	x  *Txn
	id uint64
}

func (en entry) live() bool { return en.x.state == stPending && en.x.ID == en.id }

func newFifo(n int) fifo { return fifo{buf: make([]entry, n)} }

func (f *fifo) push(x *Txn) {
	if f.size == len(f.buf) {
		f.compact()
		if f.size == len(f.buf) {
			panic("txn: pending queue overflow") // bounded by the table size
		}
	}
	f.buf[(f.head+f.size)%len(f.buf)] = entry{x, x.ID}
	f.size++
}

func (f *fifo) at(i int) entry { return f.buf[(f.head+i)%len(f.buf)] }

func (f *fifo) pop() entry {
	en := f.buf[f.head]
	f.buf[f.head] = entry{}
	f.head = (f.head + 1) % len(f.buf)
	f.size--
	return en
}

// compact drops stale entries, keeping the order of the live ones.
func (f *fifo) compact() {
	n := f.size
	for range n {
		en := f.pop()
		if en.live() {
			f.buf[(f.head+f.size)%len(f.buf)] = en
			f.size++
		}
	}
}

func (f *fifo) clear() {
	for f.size > 0 {
		f.pop()
	}
}

func (f *fifo) len() int { return f.size }
