package fault

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/dst-dev/dst/transport"
)

// seeder hands out one generator per conn from a parent generator, in the
// order conns are made, so that a sequence of conns replays from one seed.
type seeder struct {
	mu  sync.Mutex
	rng *rand.Rand
	n   int
}

func newSeeder(rng *rand.Rand) *seeder {
	if rng == nil {
		rng = rand.New(rand.NewPCG(0, 0))
	}
	return &seeder{rng: rng}
}

func (s *seeder) next() (*rand.Rand, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return rand.New(rand.NewPCG(s.rng.Uint64(), s.rng.Uint64())), s.n
}

func named(cfg Config, base string, n int) Config {
	if base == "" {
		base = "conn"
	}
	cfg.Name = fmt.Sprintf("%s#%d", base, n)
	return cfg
}

// Listener wraps every conn accepted from a net.Listener with a Config.
type Listener struct {
	l    net.Listener
	cfg  Config
	seed *seeder
}

// WrapListener returns a listener whose accepted conns are *Conn with cfg.
// Each conn gets its own generator derived from rng in accept order, and a
// log name cfg.Name#N.
func WrapListener(l net.Listener, cfg Config, rng *rand.Rand) *Listener {
	return &Listener{l: l, cfg: cfg, seed: newSeeder(rng)}
}

// Accept accepts a conn and wraps it.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.l.Accept()
	if err != nil {
		return nil, err
	}
	rng, n := l.seed.next()
	return Wrap(c, named(l.cfg, l.cfg.Name, n), rng), nil
}

func (l *Listener) Close() error   { return l.l.Close() }
func (l *Listener) Addr() net.Addr { return l.l.Addr() }

// SetDeadline sets the Accept deadline, if the wrapped listener supports it.
func (l *Listener) SetDeadline(t time.Time) error {
	dl, ok := l.l.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return fmt.Errorf("listener %T has no SetDeadline", l.l)
	}
	return dl.SetDeadline(t)
}

// Dial dials rawURL with transport.Dial and wraps the conn with cfg.
func Dial(ctx context.Context, rawURL string, o transport.Options, cfg Config, rng *rand.Rand) (*Conn, error) {
	c, _, err := transport.Dial(ctx, rawURL, o)
	if err != nil {
		return nil, err
	}
	return Wrap(c, cfg, rng), nil
}

// Proxy accepts conns on one URL and forwards each to another URL, through
// a Conn with a fault Config on the target side: Fault.Write applies to the
// bytes going from the client to the target, Fault.Read to those coming
// back. Fault.Read's reorder is done on a second Conn that wraps the
// client's side (reorder is a write-side fault), which logs as "NAME#N
// replies". Stateful framers must be given as NewFramer, one per conn. It
// backs the "dst proxy" debugging command.
//
// Set the exported fields, then call Start; do not change them afterwards.
// Close stops it and waits for all its goroutines.
type Proxy struct {
	Listen  string            // URL to listen on, e.g. dst://127.0.0.1:0
	Target  string            // URL to forward to (its export is ignored)
	Options transport.Options // for both the listener and the target dials
	Fault   Config            // applied to each proxied conn (Name: log prefix)
	Rand    *rand.Rand        // seeds the conns' generators in accept order; nil: fixed seed

	url    *transport.URL
	target *transport.URL
	ln     net.Listener
	seed   *seeder
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// Start listens and serves in the background. ctx bounds the setup, and
// also the proxy's life: when it ends the proxy stops accepting and dialing
// (Close must still be called to wait for it).
func (p *Proxy) Start(ctx context.Context) error {
	target, err := transport.ParseURL(p.Target)
	if err != nil {
		return fmt.Errorf("proxy: target: %w", err)
	}
	ln, u, err := transport.Listen(ctx, p.Listen, p.Options)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	p.target, p.url, p.ln = target, u, ln
	p.seed = newSeeder(p.Rand)
	p.conns = map[net.Conn]struct{}{}
	p.ctx, p.cancel = context.WithCancel(ctx)
	p.wg.Add(2)
	go p.acceptLoop()
	go func() {
		// Stop accepting when ctx ends; Close cancels p.ctx too.
		defer p.wg.Done()
		<-p.ctx.Done()
		p.ln.Close()
	}()
	p.logf("proxy: listening on %s, forwarding to %s", p.url, p.target)
	return nil
}

// URL returns the URL the proxy listens on (with the actual port), which
// clients dial instead of the target.
func (p *Proxy) URL() *transport.URL { return p.url }

func (p *Proxy) logf(format string, args ...any) {
	if p.Fault.Log != nil {
		p.Fault.Log(fmt.Sprintf(format, args...))
	}
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			p.logf("proxy: accept: %v", err)
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		if !p.track(c) {
			c.Close()
			return
		}
		rng, n := p.seed.next()
		p.wg.Add(1)
		go p.serve(c, rng, n)
	}
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) serve(client net.Conn, rng *rand.Rand, n int) {
	defer p.wg.Done()
	defer p.untrack(client)
	up, err := transport.DialURL(p.ctx, p.target, p.Options)
	if err != nil {
		p.logf("proxy: conn #%d: %v", n, err)
		return
	}
	base := p.Fault.Name
	if base == "" {
		base = "proxy"
	}
	cfg := named(p.Fault, base, n)
	replies := cfg.Read
	cfg.Read.ReorderProb = 0
	fc := Wrap(up, cfg, rng)
	if !p.track(fc) {
		fc.Close()
		return
	}
	defer p.untrack(fc)
	down := client
	if replies.ReorderProb > 0 {
		// Reorder is a write-side fault: replies are reordered as they are
		// written to the client, by a second Conn with their framing.
		cc := Wrap(client, Config{
			Name: cfg.Name + " replies",
			Write: Rules{Framer: replies.Framer, NewFramer: replies.NewFramer, ReorderProb: replies.ReorderProb,
				ReorderHold: replies.ReorderHold, CanReorder: replies.CanReorder},
			Log: cfg.Log,
		}, rng)
		if !p.track(cc) {
			cc.Close()
			return
		}
		defer p.untrack(cc)
		down = cc
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pump(fc, down) }()
	go func() { defer wg.Done(); pump(down, fc) }()
	wg.Wait()
}

// pump copies src to dst. At EOF it passes the half-close on; on an error it
// closes both, which also ends the pump going the other way.
func pump(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return
		}
	}
	dst.Close()
	src.Close()
}

// Close stops accepting, closes every proxied conn and waits for the
// proxy's goroutines to end.
func (p *Proxy) Close() error {
	if p.cancel == nil {
		return errors.New("proxy: not started")
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errors.New("proxy: already closed")
	}
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	p.cancel()
	err := p.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil // the ctx watcher closed it first
	}
	for c := range conns {
		c.Close()
	}
	p.wg.Wait()
	return err
}
