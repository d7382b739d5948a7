package txn

// The Client drives an Engine over real connections.
//
//	serial   (run loop, one goroutine): ticks, connection events, Ready ->
//	         writes (one writev for many frames) -> Advance; it alone calls
//	         Tick, ConnUp, ConnDown, DialFailed, Ready and Advance.
//	parallel (reader, one per connection): reply header -> Receiving ->
//	         payload straight into the request's buffer -> Step ->
//	         completions delivered from this goroutine.
//	parallel (submitters: ublk queue goroutines): Submit, then a
//	         non-blocking wake of the run loop.
//	transient (dialer): dial + handshake, result sent to the run loop.
//
// One mutex guards the engine; no I/O is done while holding it.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
)

// Options configure a Client.
type Options struct {
	URL       string
	Transport transport.Options
	// Tick is the engine's clock resolution (default 100ms).
	Tick time.Duration
	// Timeout, Retries, Ping: see Config; defaults 10s, 6, 2s.
	Timeout time.Duration
	Retries int
	Ping    time.Duration
	// BackoffMax caps the delay between reconnect attempts (default 2s).
	BackoffMax time.Duration
	// Capacity: transactions in flight at most (default 1024).
	Capacity int
	ReadOnly bool   // ask for a read-only session
	Name     string // client name sent to the exporter (default hostname)
	// HandshakeTimeout bounds dial + handshake (default 10s).
	HandshakeTimeout time.Duration
	Log              *zap.Logger
	// OnState is called (from the run loop) when the connection state
	// changes.
	OnState func(ConnState)
}

func (o *Options) defaults() {
	if o.Tick <= 0 {
		o.Tick = 100 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Retries < 0 {
		o.Retries = 0
	}
	if o.Ping <= 0 {
		o.Ping = 2 * time.Second
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 2 * time.Second
	}
	if o.Capacity <= 0 {
		o.Capacity = 1024
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.Name == "" {
		o.Name, _ = os.Hostname()
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
}

func ticks(d, tick time.Duration) uint64 { return uint64(max(1, (d+tick-1)/tick)) }

// Client is a connection to one export, with reconnects and resends.
type Client struct {
	opts Options
	url  *transport.URL
	log  *zap.Logger

	procMu  sync.Mutex // held while driving Ready/Advance, Tick and connection events
	dialing bool       // a dialer goroutine is running; under procMu
	mu      sync.Mutex // guards the engine and the fields below
	e       *Engine
	welcome *wire.Welcome // of the first connection: the device's geometry
	session wire.Token
	conn    net.Conn
	gen     uint64
	state   ConnState
	deliver func([]Completion)

	wake   chan struct{}
	events chan event
	quit   chan struct{}
	wg     sync.WaitGroup

	// run loop scratch, reused
	iov      net.Buffers
	iovBack  [][]byte
	comps    []Completion
	pingHdr  [wire.RequestHeaderSize]byte
	discHdr  [wire.RequestHeaderSize]byte
	detached chan struct{}
}

type event struct {
	kind    int // evUp, evDialFailed, evReaderDone
	conn    net.Conn
	welcome *wire.Welcome
	gen     uint64
	err     error
}

const (
	evUp = iota
	evDialFailed
	evReaderDone
)

// Dial connects to the export at opts.URL and returns a running client.
// The first connection is made here, synchronously, so that a bad URL, a
// refusal or an unreachable exporter is reported at once.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	opts.defaults()
	u, err := transport.ParseURL(opts.URL)
	if err != nil {
		return nil, err
	}
	if u.Export == "" {
		return nil, fmt.Errorf("URL %s names no export: add /EXPORT (or ?export=NAME for unix sockets)", u)
	}
	tk := opts.Tick
	c := &Client{
		opts: opts, url: u, log: opts.Log,
		e: New(Config{
			Capacity:   opts.Capacity,
			Timeout:    ticks(opts.Timeout, tk),
			Retries:    opts.Retries,
			Ping:       ticks(opts.Ping, tk),
			BackoffMin: 1,
			BackoffMax: ticks(opts.BackoffMax, tk),
		}),
		wake:     make(chan struct{}, 1),
		events:   make(chan event, 4),
		quit:     make(chan struct{}),
		detached: make(chan struct{}),
		deliver:  func([]Completion) {},
	}
	c.iovBack = make([][]byte, 0, 2*c.e.tab.capacity()+2)
	conn, w, err := c.handshake(ctx)
	if err != nil {
		return nil, err
	}
	c.welcome = w
	c.connected(conn, w)
	c.wg.Add(1)
	go c.run()
	return c, nil
}

// Welcome returns what the exporter announced on the first connection.
func (c *Client) Welcome() *wire.Welcome { return c.welcome }

// URL returns the export URL.
func (c *Client) URL() *transport.URL { return c.url }

// SetDeliver sets the function that receives completions. It is called
// from the reader or the run loop, never with the engine locked, and must
// not keep the slice.
func (c *Client) SetDeliver(f func([]Completion)) {
	c.mu.Lock()
	c.deliver = f
	c.mu.Unlock()
}

// State returns the connection state.
func (c *Client) State() ConnState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.e.State()
}

// Stats returns the engine's counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.e.Stats()
}

// Submit starts a transaction; the result arrives through the deliver
// function. buf must stay untouched until then.
func (c *Client) Submit(h Handle, op wire.Op, flags wire.Flags, off uint64, length uint32, buf []byte) {
	c.Enqueue(h, op, flags, off, length, buf)
	c.kick()
}

// Enqueue is Submit without sending: the caller calls Flush after a batch.
func (c *Client) Enqueue(h Handle, op wire.Op, flags wire.Flags, off uint64, length uint32, buf []byte) {
	c.mu.Lock()
	ok := c.e.Submit(h, op, flags, off, length, buf)
	var comps []Completion
	if !ok {
		comps = []Completion{{Handle: h, Err: syscall.EBUSY}}
	} else if len(c.e.done) > 0 {
		comps = c.e.TakeCompletions(nil)
	}
	deliver := c.deliver
	c.mu.Unlock()
	if comps != nil {
		deliver(comps)
	}
}

// handshake dials and negotiates one connection.
func (c *Client) handshake(ctx context.Context) (net.Conn, *wire.Welcome, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.HandshakeTimeout)
	defer cancel()
	topts := c.opts.Transport
	conn, err := transport.DialURL(ctx, c.url, topts)
	if err != nil {
		return nil, nil, err
	}
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	h := &wire.Hello{
		Version:      wire.Version,
		Export:       c.url.Export,
		Features:     wire.FeatFlush | wire.FeatFUA | wire.FeatDiscard | wire.FeatWriteZeroes | wire.FeatResume,
		WantReadOnly: c.opts.ReadOnly,
		ClientName:   c.opts.Name,
		MaxInflight:  uint32(min(c.opts.Capacity, wire.MaxInflightLimit)),
	}
	c.mu.Lock()
	if !c.session.IsZero() {
		h.Session, h.HasSession = c.session, true
	}
	c.mu.Unlock()
	if err := wire.WriteHello(conn, h); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("handshake with %s: %w", c.url, err)
	}
	w, err := wire.ReadWelcome(conn)
	if err != nil {
		conn.Close()
		var re *wire.RefuseError
		if errors.As(err, &re) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("handshake with %s: %w", c.url, err)
	}
	if first := c.welcome; first != nil {
		if w.Size != first.Size || w.LogicalBlock != first.LogicalBlock || w.ReadOnly && !first.ReadOnly {
			conn.Close()
			return nil, nil, &changedError{fmt.Sprintf("export %s changed: size %d -> %d, block %d -> %d, read-only %v -> %v",
				c.url.Export, first.Size, w.Size, first.LogicalBlock, w.LogicalBlock, first.ReadOnly, w.ReadOnly)}
		}
	}
	conn.SetDeadline(time.Time{})
	return conn, w, nil
}

type changedError struct{ msg string }

func (e *changedError) Error() string { return e.msg }

// connected installs a new connection (the run loop, or Dial before the
// loop starts) and starts its reader.
func (c *Client) connected(conn net.Conn, w *wire.Welcome) {
	c.mu.Lock()
	c.gen++
	c.conn = conn
	c.session = w.Session
	c.e.ConnUp(int(w.MaxInflight))
	gen := c.gen
	c.mu.Unlock()
	c.wg.Add(1)
	go c.reader(conn, gen)
}

func (c *Client) run() {
	defer c.wg.Done()
	t := time.NewTicker(c.opts.Tick)
	defer t.Stop()
	c.notifyState()
	for {
		var tick bool
		var ev event
		var haveEv bool
		select {
		case <-c.quit:
			return
		case <-c.wake:
		case <-t.C:
			tick = true
		case ev = <-c.events:
			haveEv = true
		}
		// procMu: Tick and the connection events must not fall between a
		// Ready and its Advance, which a Flush on a queue goroutine may be
		// in the middle of.
		c.procMu.Lock()
		if tick {
			c.mu.Lock()
			c.e.Tick()
			c.mu.Unlock()
		}
		if haveEv {
			switch ev.kind {
			case evUp:
				c.dialing = false
				c.log.Info("connected", zap.Stringer("url", c.url), zap.Bool("resumed", ev.welcome.Resumed))
				c.connected(ev.conn, ev.welcome)
			case evDialFailed:
				c.dialing = false
				c.mu.Lock()
				c.e.DialFailed()
				var ce *changedError
				if errors.As(ev.err, &ce) {
					c.e.Fail(syscall.EIO)
				}
				c.mu.Unlock()
				c.log.Warn("connect failed", zap.Stringer("url", c.url), zap.Error(ev.err))
			case evReaderDone:
				c.mu.Lock()
				if ev.gen == c.gen && c.conn != nil {
					c.conn.Close()
					c.conn = nil
					c.e.ConnDown()
					c.log.Warn("connection lost", zap.Stringer("url", c.url), zap.Error(ev.err))
				}
				c.mu.Unlock()
			}
		}
		c.process()
		c.procMu.Unlock()
		c.notifyState()
	}
}

// Flush sends whatever is ready from the caller's goroutine (a ublk queue
// after a batch of requests) instead of waking the run loop: one writev for
// the batch, no hand-over between goroutines. If another goroutine is
// already sending, the run loop is woken to pick up the rest.
func (c *Client) Flush() {
	if c.procMu.TryLock() {
		c.process()
		c.procMu.Unlock()
		return
	}
	c.kick()
}

func (c *Client) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Client) notifyState() {
	c.mu.Lock()
	s := c.e.State()
	changed := s != c.state
	c.state = s
	c.mu.Unlock()
	if changed && c.opts.OnState != nil {
		c.opts.OnState(s)
	}
}

// process carries out Ready until there is nothing left. The caller holds
// procMu.
func (c *Client) process() {
	c.mu.Lock()
	for c.e.HasReady() {
		rd := c.e.Ready()
		conn := c.conn
		c.iovBack = c.iovBack[:0]
		for _, x := range rd.Send {
			c.iovBack = append(c.iovBack, x.Header[:])
			if x.Op == wire.OpWrite {
				c.iovBack = append(c.iovBack, x.Buf)
			}
		}
		if rd.Ping {
			r := wire.Request{Op: wire.OpPing, ID: rd.PingID, Floor: c.e.Floor()}
			r.Put(c.pingHdr[:])
			c.iovBack = append(c.iovBack, c.pingHdr[:])
		}
		if rd.Disconnect {
			r := wire.Request{Op: wire.OpDisconnect, Floor: c.e.Floor()}
			r.Put(c.discHdr[:])
			c.iovBack = append(c.iovBack, c.discHdr[:])
		}
		closeConn, dial := rd.CloseConn, rd.Dial
		c.mu.Unlock()

		if len(c.iovBack) > 0 && conn != nil {
			c.iov = c.iovBack
			// A peer that stops reading must not stall the loop forever:
			// past two ping intervals the connection is dead anyway.
			conn.SetWriteDeadline(time.Now().Add(2 * c.opts.Ping))
			if _, err := c.iov.WriteTo(conn); err != nil {
				c.log.Debug("write failed", zap.Error(err))
				closeConn = true
			}
		}
		if closeConn && conn != nil {
			conn.Close() // the reader sees the error and reports ConnDown
		}
		if dial && !c.dialing {
			c.dialing = true
			c.wg.Add(1)
			go c.dial()
		}

		c.mu.Lock()
		c.e.Advance()
		if closeConn && !dial {
			// Wait for the reader's evReaderDone before anything else.
			break
		}
	}
	c.comps = c.e.TakeCompletions(c.comps[:0])
	deliver := c.deliver
	c.mu.Unlock()
	if len(c.comps) > 0 {
		deliver(c.comps)
	}
}

func (c *Client) dial() {
	defer c.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-c.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	conn, w, err := c.handshake(ctx)
	cancel()
	ev := event{kind: evUp, conn: conn, welcome: w, err: err}
	if err != nil {
		ev.kind = evDialFailed
	}
	select {
	case c.events <- ev:
	case <-c.quit:
		if conn != nil {
			conn.Close()
		}
	}
}

// reader reads replies from one connection until it fails.
func (c *Client) reader(conn net.Conn, gen uint64) {
	defer c.wg.Done()
	br := bufio.NewReaderSize(conn, 256<<10)
	var hdr [wire.ReplyHeaderSize]byte
	var comps []Completion
	err := func() error {
		for {
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return err
			}
			r, err := wire.ParseReply(hdr[:])
			if err != nil {
				return err
			}
			if n := r.PayloadLen(); n > 0 {
				c.mu.Lock()
				buf := c.e.Receiving(r.ID, r.Length)
				c.mu.Unlock()
				if buf != nil {
					_, err = io.ReadFull(br, buf)
				} else {
					_, err = br.Discard(n)
				}
				if err != nil {
					return err
				}
			}
			c.mu.Lock()
			c.e.Step(r)
			comps = c.e.TakeCompletions(comps[:0])
			more := c.e.HasReady()
			detached := c.e.Detached()
			deliver := c.deliver
			c.mu.Unlock()
			if len(comps) > 0 {
				deliver(comps)
			}
			if detached {
				select {
				case <-c.detached:
				default:
					close(c.detached)
				}
				return io.EOF
			}
			if more {
				select {
				case c.wake <- struct{}{}:
				default:
				}
			}
		}
	}()
	select {
	case c.events <- event{kind: evReaderDone, gen: gen, err: err}:
	case <-c.quit:
	}
}

// Close detaches cleanly: it waits (bounded by ctx) for every transaction
// to be answered and the exporter to acknowledge DISCONNECT, then stops.
// Whatever is still in flight when ctx expires fails with EIO.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	c.e.Detach()
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	// Wait for the exporter's echo while there is a connection to carry
	// it; with none, there is nobody to say goodbye to.
	var err error
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
wait:
	for {
		select {
		case <-c.detached:
			break wait
		case <-ctx.Done():
			err = fmt.Errorf("detach from %s: %w", c.url, ctx.Err())
			break wait
		case <-poll.C:
			if c.State() != Up {
				err = fmt.Errorf("detach from %s: not connected; requests still in flight failed with EIO", c.url)
				break wait
			}
		}
	}
	close(c.quit)
	c.mu.Lock()
	if c.conn != nil {
		c.conn.Close()
	}
	c.e.Close()
	comps := c.e.TakeCompletions(nil)
	deliver := c.deliver
	c.mu.Unlock()
	if len(comps) > 0 {
		deliver(comps)
	}
	c.wg.Wait()
	return err
}
