package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dst-dev/dst/transport/internal/deadline"
)

// The mem transport: dst+mem://name/export, within one process. Listeners
// live in a process-global registry under their name; Dial connects to the
// listener by name. It is meant for tests and for wiring a client and an
// exporter in one process.
//
// Unlike net.Pipe, whose Write blocks until the reader has taken every byte,
// each direction of a mem conn is a bounded ring buffer (MemBufferSize by
// default, or Options.SendBuffer/RecvBuffer) like a socket buffer: Write
// returns as soon as its bytes are buffered and blocks only while the buffer
// is full, so pipelined traffic flows without a rendezvous per write.
//
// Semantics follow TCP's:
//   - Dial completes without waiting for Accept (up to a backlog of
//     memBacklog pending conns; beyond it Dial waits, bounded by its ctx).
//     Dialling a name nobody listens on fails with ECONNREFUSED.
//   - Close of one end: the other end reads what was written before, then
//     io.EOF; its writes fail with EPIPE. Any call on the closed end itself
//     fails with an error wrapping net.ErrClosed, and calls blocked in it
//     return so.
//   - CloseWrite shuts down the sending direction only (the peer reads EOF).
//   - SetDeadline, SetReadDeadline and SetWriteDeadline apply to pending
//     calls too; an expired deadline gives an error wrapping
//     os.ErrDeadlineExceeded whose Timeout() is true.
//   - Concurrent Writes do not interleave (each Write is atomic with respect
//     to other Writes), nor do concurrent Reads.
//
// Closing the listener refuses new dials, closes conns not yet accepted, and
// frees the name; conns already accepted live on.

func init() { Register(&memTransport{listeners: map[string]*memListener{}}) }

// MemBufferSize is the default size of each direction's buffer of a mem conn.
const MemBufferSize = 1 << 20

const (
	memBacklog       = 128
	memInitialBuffer = 64 << 10 // buffers grow on demand up to their size
)

type memTransport struct {
	mu        sync.Mutex
	listeners map[string]*memListener
	seq       atomic.Uint64
}

func (*memTransport) Name() string      { return "mem" }
func (*memTransport) Schemes() []string { return []string{"dst+mem"} }
func (*memTransport) Forms() []string   { return []string{"dst+mem://name/export"} }

// ParseAddress accepts a name of letters, digits, '.', '_' and '-'.
func (*memTransport) ParseAddress(addr string) (string, error) {
	if addr == "" || addr[0] == '/' {
		return "", errors.New("empty mem listener name (write dst+mem://name/export)")
	}
	for _, c := range addr {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_' || c == '.') {
			return "", fmt.Errorf("bad character %q in mem listener name %q (allowed: letters, digits, . _ -)", c, addr)
		}
	}
	return addr, nil
}

func (m *memTransport) Listen(ctx context.Context, u *URL, o Options) (net.Listener, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, dup := m.listeners[u.Address]; dup {
		return nil, fmt.Errorf("mem listener %q: %w", u.Address, syscall.EADDRINUSE)
	}
	l := &memListener{
		t:        m,
		addr:     memAddr(u.Address),
		o:        o,
		backlog:  make(chan *memConn, memBacklog),
		done:     make(chan struct{}),
		deadline: deadline.New(),
	}
	m.listeners[u.Address] = l
	return l, nil
}

func (m *memTransport) Dial(ctx context.Context, u *URL, o Options) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	l := m.listeners[u.Address]
	m.mu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("no mem listener %q: %w", u.Address, syscall.ECONNREFUSED)
	}
	return l.dial(ctx, o, m.seq.Add(1))
}

type memAddr string

func (memAddr) Network() string  { return "mem" }
func (a memAddr) String() string { return string(a) }

type memListener struct {
	t        *memTransport
	addr     memAddr
	o        Options
	backlog  chan *memConn
	done     chan struct{} // closed by Close
	once     sync.Once
	mu       sync.RWMutex // held shared by dialers sending to backlog
	closed   bool
	deadline *deadline.Deadline
}

func bufSize(a, b int) int {
	if a > 0 {
		return a
	}
	if b > 0 {
		return b
	}
	return MemBufferSize
}

func (l *memListener) dial(ctx context.Context, o Options, id uint64) (net.Conn, error) {
	c2s := newRing(bufSize(o.SendBuffer, l.o.RecvBuffer))
	s2c := newRing(bufSize(o.RecvBuffer, l.o.SendBuffer))
	cliAddr := memAddr(fmt.Sprintf("%s#%d", l.addr, id))
	cli := newMemConn(s2c, c2s, cliAddr, l.addr)
	srv := newMemConn(c2s, s2c, l.addr, cliAddr)

	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, fmt.Errorf("mem listener %q is closed: %w", l.addr, syscall.ECONNREFUSED)
	}
	select {
	case l.backlog <- srv:
		return cli, nil
	case <-l.done:
		return nil, fmt.Errorf("mem listener %q is closed: %w", l.addr, syscall.ECONNREFUSED)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *memListener) opErr(err error) error {
	return &net.OpError{Op: "accept", Net: "mem", Addr: l.addr, Err: err}
}

// Accept waits for a conn, until the listener is closed or its deadline
// passes.
func (l *memListener) Accept() (net.Conn, error) {
	select {
	case <-l.done:
		return nil, l.opErr(net.ErrClosed)
	default:
	}
	dl := l.deadline.Done()
	select {
	case <-dl:
		return nil, l.opErr(os.ErrDeadlineExceeded)
	default:
	}
	select {
	case c := <-l.backlog:
		return c, nil
	case <-l.done:
		return nil, l.opErr(net.ErrClosed)
	case <-dl:
		return nil, l.opErr(os.ErrDeadlineExceeded)
	}
}

// Close frees the name, refuses further dials and closes the conns that
// were not accepted yet.
func (l *memListener) Close() error {
	first := false
	l.once.Do(func() {
		first = true
		l.t.mu.Lock()
		if l.t.listeners[string(l.addr)] == l {
			delete(l.t.listeners, string(l.addr))
		}
		l.t.mu.Unlock()
		close(l.done) // wakes dialers waiting for backlog space
		l.mu.Lock()   // waits for them to leave
		l.closed = true
		l.mu.Unlock()
		for {
			select {
			case c := <-l.backlog:
				c.Close()
			default:
				l.deadline.Stop()
				return
			}
		}
	})
	if !first {
		return &net.OpError{Op: "close", Net: "mem", Addr: l.addr, Err: net.ErrClosed}
	}
	return nil
}

func (l *memListener) Addr() net.Addr { return l.addr }

// SetDeadline sets the deadline of Accept (zero: none).
func (l *memListener) SetDeadline(t time.Time) error {
	select {
	case <-l.done:
		return l.opErr(net.ErrClosed)
	default:
	}
	l.deadline.Set(t)
	return nil
}

// ring is one direction of a mem conn: a bounded byte ring written by one
// end and read by the other. Waiters are woken through 1-token channels,
// which never lose a wake-up: a token sent while nobody waits stays for the
// next waiter, who then rechecks the state.
type ring struct {
	mu       sync.Mutex
	buf      []byte // grows on demand up to max
	max      int
	r, n     int           // read index, bytes buffered
	wclosed  bool          // writing end shut down: EOF once drained
	rclosed  bool          // reading end gone: writes fail with EPIPE
	readable chan struct{} // data or EOF for the reader
	writable chan struct{} // space or error for the writer
}

func newRing(max int) *ring {
	return &ring{max: max, readable: make(chan struct{}, 1), writable: make(chan struct{}, 1)}
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// read copies buffered bytes into p (len(p) > 0). wait reports that there
// is nothing to read yet.
func (r *ring) read(p []byte) (n int, err error, wait bool) {
	r.mu.Lock()
	if r.n == 0 {
		eof := r.wclosed
		r.mu.Unlock()
		if eof {
			return 0, io.EOF, false
		}
		return 0, nil, true
	}
	for n < len(p) && r.n > 0 {
		end := min(r.r+r.n, len(r.buf))
		k := copy(p[n:], r.buf[r.r:end])
		n += k
		r.n -= k
		r.r += k
		if r.r == len(r.buf) {
			r.r = 0
		}
	}
	if r.n == 0 {
		r.r = 0
	}
	more := r.n > 0
	r.mu.Unlock()
	wake(r.writable)
	if more {
		wake(r.readable) // for another reader
	}
	return n, nil, false
}

// write copies as much of p (len(p) > 0) as fits. wait reports that the
// buffer is full.
func (r *ring) write(p []byte) (n int, err error, wait bool) {
	r.mu.Lock()
	if r.rclosed {
		r.mu.Unlock()
		return 0, syscall.EPIPE, false
	}
	if r.wclosed {
		r.mu.Unlock()
		return 0, net.ErrClosed, false
	}
	if len(r.buf)-r.n < len(p) && len(r.buf) < r.max {
		r.grow(len(p))
	}
	if r.n == len(r.buf) {
		r.mu.Unlock()
		return 0, nil, true
	}
	for n < len(p) && r.n < len(r.buf) {
		w := r.r + r.n
		if w >= len(r.buf) {
			w -= len(r.buf)
		}
		end := len(r.buf)
		if w < r.r {
			end = r.r
		}
		k := copy(r.buf[w:end], p[n:])
		n += k
		r.n += k
	}
	r.mu.Unlock()
	wake(r.readable)
	return n, nil, false
}

// grow enlarges the buffer to fit need more bytes if the limit allows,
// moving the data to the front. r.mu is held.
func (r *ring) grow(need int) {
	size := min(r.max, max(memInitialBuffer, 2*len(r.buf), r.n+need))
	nb := make([]byte, size)
	if r.n > 0 {
		end := min(r.r+r.n, len(r.buf))
		k := copy(nb, r.buf[r.r:end])
		copy(nb[k:], r.buf[:r.n-k])
	}
	r.buf, r.r = nb, 0
}

// closeRead is called when the reading end goes away: buffered data is
// dropped and the writer is woken to fail.
func (r *ring) closeRead() {
	r.mu.Lock()
	r.rclosed = true
	r.buf, r.r, r.n = nil, 0, 0
	r.mu.Unlock()
	wake(r.writable)
	wake(r.readable)
}

// closeWrite is called when the writing end shuts down: the reader gets EOF
// after the buffered data.
func (r *ring) closeWrite() {
	r.mu.Lock()
	r.wclosed = true
	r.mu.Unlock()
	wake(r.readable)
	wake(r.writable)
}

type memConn struct {
	in, out       *ring
	local, remote memAddr
	rmu, wmu      sync.Mutex // serialise Reads, and Writes
	rd, wd        *deadline.Deadline
	done          chan struct{} // closed by Close
	once          sync.Once
}

func newMemConn(in, out *ring, local, remote memAddr) *memConn {
	return &memConn{
		in: in, out: out, local: local, remote: remote,
		rd: deadline.New(), wd: deadline.New(),
		done: make(chan struct{}),
	}
}

func (c *memConn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "mem", Source: c.local, Addr: c.remote, Err: err}
}

func (c *memConn) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *memConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.isClosed() {
			return 0, c.opErr("read", net.ErrClosed)
		}
		dl := c.rd.Done()
		select {
		case <-dl:
			return 0, c.opErr("read", os.ErrDeadlineExceeded)
		default:
		}
		if len(p) == 0 {
			return 0, nil
		}
		n, err, wait := c.in.read(p)
		if !wait {
			return n, err // nil or io.EOF, which must not be wrapped
		}
		select {
		case <-c.in.readable:
		case <-c.done:
		case <-dl:
		}
	}
}

func (c *memConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	total := 0
	for {
		if c.isClosed() {
			return total, c.opErr("write", net.ErrClosed)
		}
		dl := c.wd.Done()
		select {
		case <-dl:
			return total, c.opErr("write", os.ErrDeadlineExceeded)
		default:
		}
		if len(p) == 0 {
			return total, nil
		}
		n, err, wait := c.out.write(p)
		total += n
		p = p[n:]
		if err != nil {
			return total, c.opErr("write", err)
		}
		if wait {
			select {
			case <-c.out.writable:
			case <-c.done:
			case <-dl:
			}
		}
	}
}

// Close closes both directions: the peer reads the data already written,
// then EOF, and its writes fail.
func (c *memConn) Close() error {
	first := false
	c.once.Do(func() {
		first = true
		close(c.done)
		c.in.closeRead()
		c.out.closeWrite()
		c.rd.Stop()
		c.wd.Stop()
	})
	if !first {
		return c.opErr("close", net.ErrClosed)
	}
	return nil
}

// CloseWrite shuts down the sending direction: the peer reads EOF once it
// has read what was written; further Writes fail.
func (c *memConn) CloseWrite() error {
	if c.isClosed() {
		return c.opErr("close", net.ErrClosed)
	}
	c.out.closeWrite()
	return nil
}

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

func (c *memConn) SetDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opErr("set deadline", net.ErrClosed)
	}
	c.rd.Set(t)
	c.wd.Set(t)
	return nil
}

func (c *memConn) SetReadDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opErr("set deadline", net.ErrClosed)
	}
	c.rd.Set(t)
	return nil
}

func (c *memConn) SetWriteDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opErr("set deadline", net.ErrClosed)
	}
	c.wd.Set(t)
	return nil
}
