package txn

// Client is a Conn with a ring and a goroutine of its own, for callers
// that are not a ublk queue (tests, benchmarks, tools): Submit from any
// goroutine queues the request and wakes the loop through an eventfd whose
// read stays armed on the ring; completions are delivered from the loop.
// The ublk target runs the same Conn on each queue's ring instead.

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/internal/uring"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
)

const (
	clientKindShift = 62
	clientConn      = 1 << clientKindShift // CQEs of the Conn
	clientWake      = 2 << clientKindShift // the eventfd read
	clientMask      = 1<<clientKindShift - 1
)

// Client drives one connection to an export on a goroutine of its own.
type Client struct {
	d       *dialer
	welcome *wire.Welcome
	conn    *Conn
	ring    *uring.Ring
	efd     int
	efdVal  uint64
	cqes    []uring.CQE

	mu          sync.Mutex
	subs        []submission
	spare       []submission
	deliver     func([]Completion)
	inLoop      atomic.Bool
	wakePending atomic.Bool
	stopReq     atomic.Bool
	state       atomic.Uint32
	done        chan struct{}
	one         [1]Completion
}

type submission struct {
	h      Handle
	op     wire.Op
	flags  wire.Flags
	off    uint64
	length uint32
	buf    []byte
}

// Dial connects to the export at opts.URL and returns a running client.
// The first connection is made here, synchronously, so that a bad URL, a
// refusal or an unreachable exporter is reported at once.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	d, err := newDialer(opts)
	if err != nil {
		return nil, err
	}
	l, err := d.handshake(ctx, wire.Token{})
	if err != nil {
		return nil, err
	}
	w := l.w
	d.first = w
	c := &Client{d: d, welcome: w, efd: -1, done: make(chan struct{}),
		deliver: func([]Completion) {}, cqes: make([]uring.CQE, 256)}
	user := d.opts.OnState
	d.opts.OnState = func(s ConnState) {
		c.state.Store(uint32(s))
		if user != nil {
			user(s)
		}
	}
	ready := make(chan error)
	go c.run(l, ready)
	if err := <-ready; err != nil {
		l.nc.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) run(l *link, ready chan<- error) {
	defer close(c.done)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var err error
	c.ring, err = uring.New(uring.Options{Entries: 256, SingleIssuer: true, DeferTaskrun: true})
	if err != nil {
		ready <- err
		return
	}
	defer c.ring.Close()
	c.efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		ready <- fmt.Errorf("eventfd: %w", err)
		return
	}
	c.conn = newConn(c, c.d, c.deliverOne)
	if err := c.conn.Start(l); err != nil {
		ready <- err
		return
	}
	c.armWake()
	ready <- nil
	stopping := false
	for {
		c.inLoop.Store(true)
		if c.stopReq.Load() && !stopping {
			stopping = true
			c.conn.Stop()
		}
		// Completions delivered by Poll may submit more: go round until
		// nothing new arrives.
		for {
			n := c.drainSubs()
			c.conn.Poll()
			if n == 0 && c.queued() == 0 {
				break
			}
		}
		c.inLoop.Store(false)
		if c.queued() > 0 {
			continue // submitted while we were leaving the loop
		}
		if stopping && c.conn.Inflight() == 0 {
			break
		}
		n, err := c.ring.Wait(c.cqes, -1)
		if err != nil {
			break
		}
		c.inLoop.Store(true)
		for _, q := range c.cqes[:n] {
			switch q.UserData &^ clientMask {
			case clientConn:
				c.conn.HandleCQE(q.UserData&clientMask, q.Res)
			case clientWake:
				c.wakePending.Store(false)
				c.armWake()
			}
		}
	}
	c.conn.Close()
	// The eventfd read may still be armed: it dies with the ring.
	c.mu.Lock()
	unix.Close(c.efd)
	c.efd = -1
	c.mu.Unlock()
}

func (c *Client) armWake() {
	s := c.GetSQE()
	s.PrepReadEventfd(c.efd, &c.efdVal)
	s.SetUserData(clientWake)
}

func (c *Client) queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.subs)
}

func (c *Client) drainSubs() int {
	c.mu.Lock()
	subs := c.subs
	c.subs = c.spare[:0]
	c.mu.Unlock()
	for _, s := range subs {
		c.conn.Submit(s.h, s.op, s.flags, s.off, s.length, s.buf)
	}
	n := len(subs)
	clear(subs)
	c.mu.Lock()
	c.spare = subs[:0]
	c.mu.Unlock()
	return n
}

func (c *Client) deliverOne(h Handle, err syscall.Errno) {
	c.one[0] = Completion{Handle: h, Err: err}
	c.mu.Lock()
	f := c.deliver
	c.mu.Unlock()
	f(c.one[:])
}

// GetSQE implements Loop.
func (c *Client) GetSQE() *uring.SQE {
	for {
		if s := c.ring.GetSQE(); s != nil {
			return s
		}
		c.ring.Submit() //nolint:errcheck // a broken ring shows up in Wait
	}
}

// UserData implements Loop.
func (c *Client) UserData(v uint64) uint64 { return clientConn | v&clientMask }

// Wake implements Loop.
func (c *Client) Wake() {
	if c.wakePending.CompareAndSwap(false, true) {
		c.mu.Lock()
		if c.efd >= 0 {
			one := uint64(1)
			unix.Write(c.efd, (*[8]byte)(unsafe.Pointer(&one))[:]) //nolint:errcheck
		}
		c.mu.Unlock()
	}
}

// Welcome returns what the exporter announced on the first connection.
func (c *Client) Welcome() *wire.Welcome { return c.welcome }

// URL returns the export URL.
func (c *Client) URL() *transport.URL { return c.d.url }

// SetDeliver sets the function that receives completions. It is called
// from the client's goroutine and must not keep the slice.
func (c *Client) SetDeliver(f func([]Completion)) {
	c.mu.Lock()
	c.deliver = f
	c.mu.Unlock()
}

// State returns the connection state.
func (c *Client) State() ConnState { return ConnState(c.state.Load()) }

// Stats returns the engine's counters.
func (c *Client) Stats() Stats { return c.conn.Stats() }

// Submit starts a transaction from any goroutine; the result arrives
// through the deliver function. buf must stay untouched until then.
func (c *Client) Submit(h Handle, op wire.Op, flags wire.Flags, off uint64, length uint32, buf []byte) {
	c.mu.Lock()
	c.subs = append(c.subs, submission{h, op, flags, off, length, buf})
	c.mu.Unlock()
	if !c.inLoop.Load() {
		c.Wake()
	}
}

// Close detaches cleanly: it waits (bounded by ctx) for every transaction
// to be answered and the exporter to acknowledge DISCONNECT, then stops.
// Without a connection it stops at once; what is in flight fails with EIO.
func (c *Client) Close(ctx context.Context) error {
	c.stopReq.Store(true)
	c.Wake()
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("detach from %s: %w", c.d.url, ctx.Err())
	}
}
