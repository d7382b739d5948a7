// Package fault injects network faults into a net.Conn, for tests and for
// the dst proxy debugging command: delays, stalls, cuts, bit flips, dropped
// frames and partitions, each direction configured on its own, all driven
// by a seeded math/rand/v2 generator so that a failing run can be replayed.
//
// # Units: writes, reads and frames
//
// Delay, Drop and Corrupt (with a probability) act on units. Without a
// Framer a unit is one Write call on the write side, and one Read of the
// underlying conn on the read side. With a Framer the wrapper reassembles the
// byte stream into frames (a Write may hold part of a frame, or several) and
// a unit is one whole frame. Stall, Cut and CorruptAt act on byte offsets of
// the stream and may fall in the middle of a frame.
//
// # Semantics of each fault
//
//   - Delay/Jitter: the unit is held back Delay plus a uniform random
//     [0, Jitter) before it goes on. The delay is inline: Write sleeps before
//     forwarding (Read before returning), so it limits throughput as a slow
//     link would, and it honours deadlines and Close.
//   - Stall: once StallAfter bytes have passed, the direction stops for
//     StallFor, once; then it resumes with no loss.
//   - Cut: the underlying conn is closed once CutAfter bytes have passed in
//     the direction (Config.CutAt does it at a time instead). The peer reads
//     exactly those bytes, then EOF; the local side gets ErrCut.
//   - Corrupt: one random bit of the unit is flipped, with probability
//     CorruptProb per unit; CorruptAt flips one random bit of the byte at
//     each listed offset of the incoming stream.
//   - Drop: a whole unit disappears, with probability DropProb. A byte
//     stream never loses data in its middle and carries on, so this models a
//     buggy peer or middlebox (or, without a Framer, an arbitrary loss), not
//     a network fault; use it to test that the protocol detects the
//     desynchronisation.
//   - Reorder (write side, frames only): with probability ReorderProb a
//     frame is held back and sent right after the next frame, so the peer
//     sees the two swapped; if no frame follows within ReorderHold it goes
//     alone (a held frame is never lost or delayed forever). CanReorder
//     restricts it to the frames where the protocol allows it (in DST,
//     requests and replies, not handshake messages). A Conn reorders only
//     what it writes; Proxy applies Read reorder on its client-side conn.
//   - Partition: see Partition. During it nothing crosses either way; a
//     partition shorter than the conn's deadlines is a stall, one longer is
//     seen as a timeout, which is how TCP behaves when the network
//     blackholes. With Lose, bytes written during it are lost, and since a
//     stream cannot resume after a hole, the conn is cut when the partition
//     heals.
//
// # Determinism
//
// Wrap derives one generator for each direction from the rng it is given,
// so what happens in a direction depends only on the seed and on the
// sequence of units in that direction, not on how reads and writes
// interleave. Write-side units are the caller's Writes (or frames), so they
// are reproducible; read-side units without a Framer depend on how the
// kernel splits the stream, so use a Framer (or the offset-based faults)
// where read-side faults must replay exactly. Times (Delay, Stall, CutAt,
// Partition) are real time.
//
// Every fault is reported through Config.Log, with no timestamps, so two runs
// with the same seed log the same lines.
package fault

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dst-dev/dst/transport/internal/deadline"
)

// ErrCut is the cause of the errors returned by a Conn whose underlying
// conn a fault closed.
var ErrCut = errors.New("connection cut by fault injection")

// ErrFraming is the cause of the errors returned when a Framer fails.
var ErrFraming = errors.New("fault: framing error")

// DefaultReorderHold is how long a frame held back for reordering waits
// for the next frame before it is sent alone.
const DefaultReorderHold = 5 * time.Millisecond

// MaxFrameLen is the largest frame a Framer may report.
const MaxFrameLen = 1 << 30

// A Framer finds frame boundaries in a byte stream. It is called with the
// bytes buffered so far from the start of a frame (possibly none). If they
// are not enough to tell the frame's length, it returns frameLen 0 and the
// number of bytes it needs, headerLen, which must exceed len(header).
// Otherwise it returns the frame's total length frameLen (header and
// payload, >= headerLen >= 1). An error means the stream is not what the
// Framer expects; the direction then fails with an error wrapping
// ErrFraming.
//
// Calls for one direction are sequential and follow the stream, so a Framer
// may keep state: a reply framer whose header does not carry the payload
// length can learn it from the requests seen by the write side's Framer
// (the two directions run concurrently, so state shared between them needs
// a lock).
type Framer func(header []byte) (frameLen, headerLen int, err error)

// FixedHeader returns a Framer for frames made of a headerLen-byte header
// followed by a payload whose length payloadLen reads from the header.
func FixedHeader(headerLen int, payloadLen func(header []byte) (int, error)) Framer {
	return func(h []byte) (int, int, error) {
		if len(h) < headerLen {
			return 0, headerLen, nil
		}
		n, err := payloadLen(h[:headerLen])
		if err != nil {
			return 0, headerLen, err
		}
		if n < 0 {
			return 0, headerLen, fmt.Errorf("negative payload length %d", n)
		}
		return headerLen + n, headerLen, nil
	}
}

// Rules are the faults of one direction. The zero value injects nothing.
type Rules struct {
	// Framer, if set, makes the units of Delay, Drop and CorruptProb whole
	// frames instead of Write calls (or underlying reads).
	Framer Framer
	// NewFramer, used when Framer is nil, makes a Framer for each conn
	// (Wrap calls it once per direction): for stateful framers, such as
	// wire.NewStreamFramer, in configs shared by many conns (Listener,
	// Proxy).
	NewFramer func() Framer

	// ReorderProb is the probability that a frame is held back and sent
	// after the next one (write side only; needs a Framer). ReorderHold
	// bounds the wait for that next frame (default DefaultReorderHold).
	// CanReorder, if set, says which frames may be held or overtaken
	// (false: the frame passes in order, flushing a held one first).
	ReorderProb float64
	ReorderHold time.Duration
	CanReorder  func(frame []byte) bool

	// Delay holds each unit back Delay plus a uniform random [0, Jitter).
	Delay, Jitter time.Duration

	// DropProb is the probability that a unit is dropped.
	DropProb float64

	// CorruptProb is the probability that one random bit of a unit is
	// flipped.
	CorruptProb float64
	// CorruptAt lists stream offsets (counted on the bytes entering the
	// direction, before drops) whose byte gets one random bit flipped.
	CorruptAt []int64

	// StallFor > 0 stops the direction for StallFor once StallAfter bytes
	// have passed.
	StallAfter int64
	StallFor   time.Duration

	// Cut closes the underlying conn once CutAfter bytes have passed in
	// this direction (0: before the first byte).
	Cut      bool
	CutAfter int64
}

// Partition blackholes a conn for a while.
//
// From After (since Wrap) for For, nothing crosses: Read returns data the
// wrapper already holds but reads nothing new, and Write blocks, until the
// partition heals, the call's deadline passes (a timeout error, as on a TCP
// conn whose network went silent) or the conn is closed. Nothing is lost:
// this is a TCP conn riding out a partition by retransmitting.
//
// With Lose, Write returns at once during the partition and its bytes are
// discarded (as a kernel accepts bytes into a send buffer that never
// drains). Because a byte stream cannot lose bytes and continue, a conn that
// lost any is cut when the partition heals: the peer reads what was sent
// before the partition, then EOF, which is what TCP ends in once the
// partition outlasts its retransmission timeout. A Lose partition during
// which nothing was written heals cleanly. Incoming bytes are never
// discarded: they wait in the socket until the heal (or are lost with the
// conn if it is cut).
type Partition struct {
	After, For time.Duration
	Lose       bool
}

// Config describes the faults of a conn. The zero value injects nothing.
type Config struct {
	// Name prefixes log lines ("fault[name]: ...").
	Name string
	// Read applies to the bytes the conn returns from Read (incoming),
	// Write to the bytes given to Write (outgoing).
	Read, Write Rules
	// CutAt > 0 closes the underlying conn that long after Wrap.
	CutAt time.Duration
	// Partition blackholes the conn for a while (For > 0).
	Partition Partition
	// Log, if set, receives one line per injected fault. It may be called
	// from several goroutines (Read, Write, timers) at once.
	Log func(string)
}

// DirStats counts what happened in one direction.
type DirStats struct {
	Bytes     int64 // bytes passed on (to the peer, or to the reader)
	Units     int   // units seen (writes, reads or frames)
	Dropped   int   // units dropped
	Corrupted int   // bits flipped
	Delayed   int   // units delayed
	Stalls    int   // stalls done
	Reordered int   // frames sent after the frame that followed them
	Unheld    int   // frames held for reordering that went alone (nothing followed in time)
}

// Stats counts what a Conn did.
type Stats struct {
	Read, Write DirStats
	Lost        int64 // bytes discarded by a Lose partition
	Cut         bool  // whether the conn was cut
}

// dir is the state of one direction. Its mutex serialises the direction's
// calls (Reads, or Writes), as the underlying conn would.
type dir struct {
	mu         sync.Mutex
	name       string // "read" or "write"
	rules      Rules
	rng        *rand.Rand
	dl         *deadline.Deadline
	in, out    int64     // bytes entered, bytes passed on
	stallArmed bool      // the stall has started
	stallUntil time.Time // end of the stall
	delayUntil time.Time // read side: when pending may be delivered
	buf        []byte    // bytes not yet making a whole frame
	pending    []byte    // read side: processed bytes to deliver
	err        error     // read side: sticky error from below
	scratch    []byte
	held       []byte      // write side: a frame held back for reordering
	heldIdx    int         // its unit index (for the log)
	heldGen    uint64      // bumped whenever held changes, so a stale timer does nothing
	heldTimer  *time.Timer // sends held alone after ReorderHold
}

// Conn is a net.Conn that injects faults into another one.
type Conn struct {
	c     net.Conn
	cfg   Config
	start time.Time
	r, w  dir

	done   chan struct{} // closed by Close
	once   sync.Once
	cutCh  chan struct{} // closed on cut
	cut    atomic.Bool
	timers []*time.Timer
	bg     sync.WaitGroup // reorder timers' callbacks; Close waits for them

	pmu        sync.Mutex // partition state
	partStart  time.Time
	partEnd    time.Time
	healed     bool
	lost       int64
	statsMu    sync.Mutex
	stats      Stats
	partLogged bool
}

// Wrap returns c with the faults of cfg. rng (seeded by the caller) drives
// every random choice; Wrap takes two values from it to seed one generator
// per direction, and does not use it afterwards. A nil rng means a fixed
// seed (0, 0).
//
// Reorder is a write-side fault: Wrap panics if cfg.Read asks for it (a
// programming error; Proxy handles Read reorder itself).
func Wrap(c net.Conn, cfg Config, rng *rand.Rand) *Conn {
	if rng == nil {
		rng = rand.New(rand.NewPCG(0, 0))
	}
	if cfg.Read.ReorderProb > 0 {
		panic("fault: Read.ReorderProb on a Conn: reorder applies to writes (Proxy applies Read reorder on its client side)")
	}
	for _, r := range []*Rules{&cfg.Read, &cfg.Write} {
		if r.Framer == nil && r.NewFramer != nil {
			r.Framer = r.NewFramer()
		}
		if r.ReorderHold <= 0 {
			r.ReorderHold = DefaultReorderHold
		}
	}
	fc := &Conn{
		c:     c,
		cfg:   cfg,
		start: time.Now(),
		done:  make(chan struct{}),
		cutCh: make(chan struct{}),
	}
	fc.r = dir{name: "read", rules: cfg.Read, rng: rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64())), dl: deadline.New()}
	fc.w = dir{name: "write", rules: cfg.Write, rng: rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64())), dl: deadline.New()}
	if cfg.CutAt > 0 {
		fc.timers = append(fc.timers, time.AfterFunc(cfg.CutAt, func() {
			fc.cutNow(fmt.Sprintf("cut at %v", cfg.CutAt))
		}))
	}
	if p := cfg.Partition; p.For > 0 {
		fc.partStart = fc.start.Add(p.After)
		fc.partEnd = fc.partStart.Add(p.For)
		fc.timers = append(fc.timers,
			time.AfterFunc(p.After, fc.logPartitionStart),
			time.AfterFunc(p.After+p.For, func() { fc.healCheck(time.Now()) }))
	}
	return fc
}

func (c *Conn) logf(format string, args ...any) {
	if c.cfg.Log == nil {
		return
	}
	prefix := "fault: "
	if c.cfg.Name != "" {
		prefix = "fault[" + c.cfg.Name + "]: "
	}
	c.cfg.Log(prefix + fmt.Sprintf(format, args...))
}

func (c *Conn) stat(f func(*Stats)) {
	c.statsMu.Lock()
	f(&c.stats)
	c.statsMu.Unlock()
}

// Stats returns the counters of injected faults so far.
func (c *Conn) Stats() Stats {
	c.statsMu.Lock()
	defer c.statsMu.Unlock()
	return c.stats
}

func (d *dir) stats(s *Stats) *DirStats {
	if d.name == "read" {
		return &s.Read
	}
	return &s.Write
}

func (c *Conn) opErr(op string, err error) error {
	var src, dst net.Addr
	if op == "read" || op == "write" {
		src, dst = c.c.LocalAddr(), c.c.RemoteAddr()
	}
	netw := "fault"
	if src != nil {
		netw = src.Network()
	}
	return &net.OpError{Op: op, Net: netw, Source: src, Addr: dst, Err: err}
}

func (c *Conn) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// check returns the error for a call on a closed or cut conn.
func (c *Conn) check(op string) error {
	if c.closed() {
		return c.opErr(op, net.ErrClosed)
	}
	if c.cut.Load() {
		return c.opErr(op, ErrCut)
	}
	return nil
}

// fix turns an error from the underlying conn into ErrCut if it is due to
// a cut.
func (c *Conn) fix(op string, err error) error {
	if err != nil && c.cut.Load() && !c.closed() {
		return c.opErr(op, ErrCut)
	}
	return err
}

func (c *Conn) cutNow(reason string) {
	if c.closed() || !c.cut.CompareAndSwap(false, true) {
		return
	}
	c.logf("%s", reason)
	c.stat(func(s *Stats) { s.Cut = true })
	close(c.cutCh)
	c.c.Close()
}

// sleepUntil waits until t, unless the conn is closed or cut, or dl passes.
func (c *Conn) sleepUntil(op string, t time.Time, dl *deadline.Deadline) error {
	d := time.Until(t)
	if d <= 0 {
		return nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-c.done:
		return c.opErr(op, net.ErrClosed)
	case <-c.cutCh:
		return c.opErr(op, ErrCut)
	case <-dl.Done():
		return c.opErr(op, os.ErrDeadlineExceeded)
	}
}

func (c *Conn) logPartitionStart() {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	c.logPartitionStartLocked()
}

func (c *Conn) logPartitionStartLocked() {
	if c.partLogged || c.closed() {
		return
	}
	c.partLogged = true
	mode := "stalling"
	if c.cfg.Partition.Lose {
		mode = "losing"
	}
	c.logf("partition: start, %s both ways for %v", mode, c.cfg.Partition.For)
}

// healCheck ends the partition once now is past its end, cutting the conn
// if it lost bytes. It runs from the heal timer and from any call that
// notices the end first, so that nothing written after the partition can
// reach the peer before the cut.
func (c *Conn) healCheck(now time.Time) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if c.healed || c.partEnd.IsZero() || now.Before(c.partEnd) {
		return
	}
	c.logPartitionStartLocked()
	c.healed = true
	if c.lost > 0 {
		c.cutNow(fmt.Sprintf("partition: healed after losing %d bytes written during it; cutting the conn (a stream cannot resume after a hole)", c.lost))
		return
	}
	if !c.closed() {
		c.logf("partition: healed")
	}
}

// partitioned reports whether a partition is on at now.
func (c *Conn) partitioned(now time.Time) bool {
	return !c.partEnd.IsZero() && !now.Before(c.partStart) && now.Before(c.partEnd)
}

// waitPartition blocks while a partition is on.
func (c *Conn) waitPartition(op string, dl *deadline.Deadline) error {
	now := time.Now()
	c.healCheck(now)
	if !c.partitioned(now) {
		return nil
	}
	if err := c.sleepUntil(op, c.partEnd, dl); err != nil {
		return err
	}
	c.healCheck(c.partEnd)
	return c.check(op)
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// flipBit flips one random bit of b and returns its index.
func flipBit(b []byte, rng *rand.Rand) int {
	bit := rng.IntN(len(b) * 8)
	b[bit/8] ^= 1 << (bit % 8)
	return bit
}

// process applies the unit-level faults to u, which the caller owns. It
// returns the unit to pass on (nil if dropped) and how long to hold it.
func (c *Conn) process(d *dir, u []byte, frame bool) ([]byte, time.Duration) {
	r := &d.rules
	kind := "chunk"
	if frame {
		kind = "frame"
	} else if d.name == "write" {
		kind = "write"
	}
	var idx int
	c.stat(func(s *Stats) { ds := d.stats(s); idx = ds.Units; ds.Units++ })
	start := d.in
	d.in += int64(len(u))
	for _, off := range r.CorruptAt {
		if off >= start && off < d.in {
			bit := d.rng.IntN(8)
			u[off-start] ^= 1 << bit
			c.stat(func(s *Stats) { d.stats(s).Corrupted++ })
			c.logf("%s: corrupt: flipped bit %d of byte at offset %d", d.name, bit, off)
		}
	}
	if r.DropProb > 0 && d.rng.Float64() < r.DropProb {
		c.stat(func(s *Stats) { d.stats(s).Dropped++ })
		c.logf("%s: drop: %s #%d (%d bytes at offset %d)", d.name, kind, idx, len(u), start)
		return nil, 0
	}
	if r.CorruptProb > 0 && len(u) > 0 && d.rng.Float64() < r.CorruptProb {
		bit := flipBit(u, d.rng)
		c.stat(func(s *Stats) { d.stats(s).Corrupted++ })
		c.logf("%s: corrupt: flipped bit %d of %s #%d (offset %d)", d.name, bit, kind, idx, start+int64(bit/8))
	}
	delay := r.Delay
	if r.Jitter > 0 {
		delay += time.Duration(d.rng.Int64N(int64(r.Jitter)))
	}
	if delay > 0 {
		c.stat(func(s *Stats) { d.stats(s).Delayed++ })
		c.logf("%s: delay: %s #%d by %v", d.name, kind, idx, delay)
	}
	return u, delay
}

// stallDue reports whether d must stall before passing byte d.out on, and
// starts the stall the first time.
func (c *Conn) stallDue(d *dir) bool {
	r := &d.rules
	if r.StallFor <= 0 {
		return false
	}
	if !d.stallArmed {
		if d.out < r.StallAfter {
			return false
		}
		d.stallArmed = true
		d.stallUntil = time.Now().Add(r.StallFor)
		c.stat(func(s *Stats) { d.stats(s).Stalls++ })
		c.logf("%s: stall: after %d bytes for %v", d.name, d.out, r.StallFor)
	}
	return time.Now().Before(d.stallUntil)
}

// limit returns how many of n bytes may pass before the next stall or cut
// point.
func limit(d *dir, n int) int {
	r := &d.rules
	if r.StallFor > 0 && !d.stallArmed && d.out < r.StallAfter {
		n = int(min(int64(n), r.StallAfter-d.out))
	}
	if r.Cut && d.out < r.CutAfter {
		n = int(min(int64(n), r.CutAfter-d.out))
	}
	return n
}

func (c *Conn) cutDue(d *dir) bool {
	if d.rules.Cut && d.out >= d.rules.CutAfter {
		c.cutNow(fmt.Sprintf("%s: cut after %d bytes", d.name, d.out))
		return true
	}
	return false
}

// nextFrame extracts a whole frame from d.buf, if there is one.
func nextFrame(d *dir) (frame []byte, err error) {
	flen, hlen, err := d.rules.Framer(d.buf)
	switch {
	case err != nil:
	case flen == 0 && hlen <= len(d.buf):
		err = fmt.Errorf("framer asks for %d bytes with %d buffered", hlen, len(d.buf))
	case flen == 0:
		return nil, nil
	case flen < hlen || hlen < 1:
		err = fmt.Errorf("framer returned frame length %d, header length %d", flen, hlen)
	case flen > MaxFrameLen:
		err = fmt.Errorf("frame of %d bytes (at most %d)", flen, MaxFrameLen)
	case len(d.buf) < flen:
		return nil, nil
	default:
		frame = make([]byte, flen)
		copy(frame, d.buf)
		d.buf = d.buf[:copy(d.buf, d.buf[flen:])]
		return frame, nil
	}
	return nil, fmt.Errorf("%w (%s side, at offset %d): %w", ErrFraming, d.name, d.in, err)
}

// Read reads from the underlying conn, applying cfg.Read.
func (c *Conn) Read(p []byte) (int, error) {
	d := &c.r
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		if err := c.check("read"); err != nil {
			return 0, err
		}
		if len(d.pending) > 0 {
			if err := c.sleepUntil("read", d.delayUntil, d.dl); err != nil {
				return 0, err
			}
			if c.stallDue(d) {
				if err := c.sleepUntil("read", d.stallUntil, d.dl); err != nil {
					return 0, err
				}
			}
			if c.cutDue(d) {
				return 0, c.opErr("read", ErrCut)
			}
			n := copy(p, d.pending[:limit(d, len(d.pending))])
			d.pending = d.pending[n:]
			d.out += int64(n)
			c.stat(func(s *Stats) { s.Read.Bytes += int64(n) })
			return n, nil
		}
		if d.err != nil {
			return 0, d.err
		}
		if c.cutDue(d) {
			return 0, c.opErr("read", ErrCut)
		}
		if err := c.waitPartition("read", d.dl); err != nil {
			return 0, err
		}
		if len(p) == 0 {
			return 0, nil
		}
		if err := c.readUnit(d); err != nil {
			if isTimeout(err) {
				if len(d.pending) > 0 {
					continue // deliver what came with it; the next Read times out again
				}
				return 0, err // not sticky: the caller may extend the deadline
			}
			d.err = err
		}
	}
}

// readUnit reads the next unit from below into d.pending (or drops it).
// It returns the error from below, if any, after any bytes read with it.
func (c *Conn) readUnit(d *dir) error {
	if d.scratch == nil {
		d.scratch = make([]byte, 64<<10)
	}
	if d.rules.Framer == nil {
		n, err := c.c.Read(d.scratch)
		if n > 0 {
			u := make([]byte, n)
			copy(u, d.scratch[:n])
			c.queue(d, u, false)
		}
		return c.fix("read", err)
	}
	for {
		frame, err := nextFrame(d)
		if err != nil {
			c.logf("%s", err)
			return err
		}
		if frame != nil {
			c.queue(d, frame, true)
			return nil
		}
		n, err := c.c.Read(d.scratch)
		d.buf = append(d.buf, d.scratch[:n]...)
		if err != nil {
			if isTimeout(err) {
				return err // keep the partial frame for the next Read
			}
			if len(d.buf) > 0 {
				c.logf("%s: partial frame of %d bytes before %v, passed on as is", d.name, len(d.buf), err)
				d.pending, d.buf = d.buf, nil
				d.in += int64(len(d.pending))
			}
			return c.fix("read", err)
		}
	}
}

func (c *Conn) queue(d *dir, u []byte, frame bool) {
	u, delay := c.process(d, u, frame)
	if u == nil {
		return
	}
	d.pending = u
	d.delayUntil = time.Now().Add(delay)
}

// Write writes to the underlying conn, applying cfg.Write. With a Framer, it
// returns once the bytes are buffered or sent; a partial frame waits for the
// Writes that complete it. If a Write fails (deadline, cut, error below), the
// stream is in an unknown state, as with a TCP conn: close it.
func (c *Conn) Write(p []byte) (int, error) {
	d := &c.w
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := c.check("write"); err != nil {
		return 0, err
	}
	now := time.Now()
	c.healCheck(now)
	if err := c.check("write"); err != nil {
		return 0, err
	}
	if c.cfg.Partition.Lose && c.partitioned(now) {
		c.pmu.Lock()
		c.logPartitionStartLocked()
		c.lost += int64(len(p))
		c.pmu.Unlock()
		c.stat(func(s *Stats) { s.Lost += int64(len(p)) })
		c.logf("partition: lost a write of %d bytes", len(p))
		return len(p), nil
	}
	if err := c.waitPartition("write", d.dl); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if d.rules.Framer == nil {
		u := p
		if d.rules.CorruptProb > 0 || len(d.rules.CorruptAt) > 0 {
			u = append([]byte(nil), p...) // never modify the caller's buffer
		}
		if err := c.sendUnit(d, u, false); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	d.buf = append(d.buf, p...)
	for {
		frame, err := nextFrame(d)
		if err != nil {
			c.logf("%s", err)
			return 0, err
		}
		if frame == nil {
			return len(p), nil
		}
		if err := c.sendFrame(d, frame); err != nil {
			return 0, err
		}
	}
}

// sendFrame sends a whole frame with the unit faults, and the reorder
// fault: a frame may be held back, and a held frame goes right after the
// next one. d.mu is held.
func (c *Conn) sendFrame(d *dir, frame []byte) error {
	r := &d.rules
	movable := r.CanReorder == nil || r.CanReorder(frame)
	if d.held != nil && !movable {
		if err := c.flushHeld(d, "a frame that must stay in order follows"); err != nil {
			return err
		}
	}
	var idx int
	c.stat(func(s *Stats) { idx = d.stats(s).Units })
	u, delay := c.process(d, frame, true)
	if u == nil {
		return nil
	}
	if d.held == nil && movable && r.ReorderProb > 0 && d.rng.Float64() < r.ReorderProb {
		d.held, d.heldIdx = u, idx
		d.heldGen++
		gen := d.heldGen
		c.bg.Add(1)
		d.heldTimer = time.AfterFunc(r.ReorderHold, func() {
			defer c.bg.Done()
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.heldGen == gen && d.held != nil && c.check("write") == nil {
				c.flushHeld(d, fmt.Sprintf("no frame followed within %v", r.ReorderHold))
			}
		})
		return nil
	}
	if err := c.sleepUntil("write", time.Now().Add(delay), d.dl); err != nil {
		return err
	}
	if err := c.forward(d, u); err != nil {
		return err
	}
	if d.held == nil {
		return nil
	}
	held, hidx := d.held, d.heldIdx
	c.dropHeld(d)
	c.stat(func(s *Stats) { d.stats(s).Reordered++ })
	c.logf("%s: reorder: frame #%d (%d bytes) sent after frame #%d", d.name, hidx, len(held), idx)
	return c.forward(d, held)
}

// dropHeld forgets the held frame and stops its timer. d.mu is held.
func (c *Conn) dropHeld(d *dir) {
	d.held = nil
	d.heldGen++
	if d.heldTimer != nil && d.heldTimer.Stop() {
		c.bg.Done() // the callback will not run
	}
	d.heldTimer = nil
}

// flushHeld sends the held frame alone. d.mu is held.
func (c *Conn) flushHeld(d *dir, why string) error {
	held, hidx := d.held, d.heldIdx
	c.dropHeld(d)
	c.stat(func(s *Stats) { d.stats(s).Unheld++ })
	c.logf("%s: reorder: frame #%d (%d bytes) sent alone: %s", d.name, hidx, len(held), why)
	return c.forward(d, held)
}

func (c *Conn) sendUnit(d *dir, u []byte, frame bool) error {
	u, delay := c.process(d, u, frame)
	if u == nil {
		return nil
	}
	if err := c.sleepUntil("write", time.Now().Add(delay), d.dl); err != nil {
		return err
	}
	return c.forward(d, u)
}

// forward writes u below, honouring stall and cut points.
func (c *Conn) forward(d *dir, u []byte) error {
	for len(u) > 0 {
		if c.stallDue(d) {
			if err := c.sleepUntil("write", d.stallUntil, d.dl); err != nil {
				return err
			}
		}
		if c.cutDue(d) {
			return c.opErr("write", ErrCut)
		}
		n := limit(d, len(u))
		k, err := c.c.Write(u[:n])
		d.out += int64(k)
		c.stat(func(s *Stats) { s.Write.Bytes += int64(k) })
		if err != nil {
			return c.fix("write", err)
		}
		u = u[k:]
	}
	c.cutDue(d) // cut as soon as the limit is reached, so the peer sees EOF
	return nil
}

// CloseWrite sends any partial frame held back as is, then shuts down the
// writing side of the underlying conn, if it supports that.
func (c *Conn) CloseWrite() error {
	d := &c.w
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := c.check("close"); err != nil {
		return err
	}
	if d.held != nil {
		if err := c.flushHeld(d, "CloseWrite"); err != nil {
			return err
		}
	}
	if len(d.buf) > 0 {
		c.logf("%s: partial frame of %d bytes at close, passed on as is", d.name, len(d.buf))
		buf := d.buf
		d.buf = nil
		if err := c.forward(d, buf); err != nil {
			return err
		}
	}
	cw, ok := c.c.(interface{ CloseWrite() error })
	if !ok {
		return c.opErr("close", fmt.Errorf("%T has no CloseWrite", c.c))
	}
	return c.fix("close", cw.CloseWrite())
}

// Close closes the underlying conn and stops the fault timers. A frame
// held back for reordering is sent first, as a kernel sends what it
// buffered, unless a Write is in progress.
func (c *Conn) Close() error {
	first := false
	c.once.Do(func() {
		first = true
		if d := &c.w; d.mu.TryLock() {
			if d.held != nil && c.check("close") == nil {
				c.flushHeld(d, "Close")
			}
			d.mu.Unlock()
		}
		close(c.done)
		for _, t := range c.timers {
			t.Stop()
		}
		c.r.dl.Stop()
		c.w.dl.Stop()
	})
	if !first {
		return c.opErr("close", net.ErrClosed)
	}
	err := c.c.Close()
	// A reorder timer's callback may be sending a held frame; the conn is
	// closed, so it returns at once.
	c.bg.Wait()
	if err != nil && !c.cut.Load() {
		return err
	}
	return nil
}

// NetConn returns the underlying conn.
func (c *Conn) NetConn() net.Conn { return c.c }

func (c *Conn) LocalAddr() net.Addr  { return c.c.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr { return c.c.RemoteAddr() }

func (c *Conn) SetDeadline(t time.Time) error {
	c.r.dl.Set(t)
	c.w.dl.Set(t)
	return c.c.SetDeadline(t)
}

func (c *Conn) SetReadDeadline(t time.Time) error {
	c.r.dl.Set(t)
	return c.c.SetReadDeadline(t)
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.w.dl.Set(t)
	return c.c.SetWriteDeadline(t)
}
