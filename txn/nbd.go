package txn

// The engine speaking NBD (PROTOCOL.md §10) to a standard server: nbdkit,
// qemu-nbd, nbd-server or DST's own NBD listener. The Conn, the Engine,
// the timers, reconnects and resends are the native protocol's; what
// differs is the handshake (fixed newstyle, NBD_OPT_GO), the frames (the
// 28-byte request header and the 16-byte simple reply, big-endian), the
// ping (a one-block READ at offset 0: NBD has no NOP) and what a timeout
// means. An NBD server keeps no session: it has no record of the ids it
// executed, so a request resent on the same connection could run twice
// while the first copy is still queued behind it. A reply that does not
// come on a working TCP connection means the connection or the server is
// stuck, so in NBD mode a timeout closes the connection (Config.NoSession)
// and everything unanswered is resent on a new one.

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
)

// nbdOps maps the engine's ops to NBD commands.
var nbdOps = [...]nbd.Cmd{
	wire.OpRead: nbd.CmdRead, wire.OpWrite: nbd.CmdWrite, wire.OpFlush: nbd.CmdFlush,
	wire.OpDiscard: nbd.CmdTrim, wire.OpWriteZeroes: nbd.CmdWriteZeroes,
}

// newNBDDialer is newDialer for an nbd:// or nbd+unix:// URL.
func newNBDDialer(opts Options) (*dialer, error) {
	u, err := nbd.ParseURL(opts.URL)
	if err != nil {
		return nil, err
	}
	if opts.Crypto.Suite != 0 {
		return nil, fmt.Errorf("URL %s: checksums and ciphers are DST protocol features that NBD servers do not speak; use a dst:// URL for them", u)
	}
	scheme := "nbd"
	if u.Network == "unix" {
		scheme = "nbd+unix"
	}
	return &dialer{opts: opts, nbd: &u,
		url: &transport.URL{Scheme: scheme, Transport: u.Network, Address: u.Address, Export: u.Export}}, nil
}

// nbdHandshake dials the server and negotiates the export with
// NBD_OPT_GO, asking for its block sizes (and promising to honour them:
// every request is a multiple of the logical block the device announces,
// which is at least the server's minimum). It describes the export as a
// WELCOME would, so that the device and later connections are checked
// the same way as with a DST exporter.
func (d *dialer) nbdHandshake(ctx context.Context) (*link, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.HandshakeTimeout)
	defer cancel()
	conn, err := transport.DialURL(ctx, d.url, d.opts.Transport)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	nc, info, _, err := nbd.ClientConnect(conn, nbd.ClientOptions{Export: d.nbd.Export, BlockSize: true})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("NBD handshake with %s: %w", d.nbd, err)
	}
	w, err := nbdWelcome(info, d.opts)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("NBD export %s: %w", d.nbd, err)
	}
	if err := d.checkSame(w); err != nil {
		conn.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return &link{nc: nc, w: w, nbdFlags: info.Flags}, nil
}

// nbdWelcome describes an NBD export as a WELCOME: the device's geometry
// and the features the server offers.
func nbdWelcome(info nbd.ExportInfo, o Options) (*wire.Welcome, error) {
	lb := uint32(512)
	if info.MinBlock > lb {
		lb = info.MinBlock
	}
	if lb > 4096 || lb&(lb-1) != 0 {
		return nil, fmt.Errorf("minimum block size %d: a block device needs a power of two of at most 4096", info.MinBlock)
	}
	pb := max(lb, min(info.PrefBlock, 4096))
	if pb&(pb-1) != 0 {
		pb = lb
	}
	maxT := uint32(nbd.MaxPayload)
	if info.MaxBlock != 0 {
		maxT = min(info.MaxBlock, maxT)
	}
	maxT -= maxT % lb
	if maxT < 4096 {
		return nil, fmt.Errorf("maximum block size %d is below one page", info.MaxBlock)
	}
	size := info.Size - info.Size%uint64(lb)
	if size == 0 {
		return nil, fmt.Errorf("size %d bytes is less than one %d-byte block", info.Size, lb)
	}
	w := &wire.Welcome{
		Size: size, LogicalBlock: lb, PhysicalBlock: pb, MaxTransfer: maxT,
		ReadOnly:    o.ReadOnly || info.Flags&nbd.FlagReadOnly != 0,
		MaxInflight: uint32(min(o.Capacity, wire.MaxInflightLimit)),
	}
	if info.Flags&nbd.FlagSendFlush != 0 {
		w.Features |= wire.FeatFlush
	}
	if info.Flags&nbd.FlagSendFUA != 0 {
		w.Features |= wire.FeatFUA
	}
	if info.Flags&nbd.FlagSendTrim != 0 {
		w.Features |= wire.FeatDiscard
		w.DiscardGranularity = lb
	}
	if info.Flags&nbd.FlagSendWriteZeroes != 0 {
		w.Features |= wire.FeatWriteZeroes
	}
	return w, nil
}

// nbdPing is the length of the READ that probes an idle connection.
func (c *Conn) nbdPing() uint32 { return c.d.first.LogicalBlock }

// queueNBD queues the frames of rd in NBD form: each transaction's header
// is rewritten into the first RequestLen bytes of its Header array (the
// engine has filled it in the native form), WRITE payloads follow it from
// the transaction's buffer. A DISCONNECT becomes NBD_CMD_DISC, which has no
// reply: the server closes the connection, and the receive's end finishes
// the detach.
func (c *Conn) queueNBD(rd *Ready) {
	for _, x := range rd.Send {
		r := nbd.Request{Type: nbdOps[x.Op], Cookie: x.ID, Offset: x.Offset, Length: x.Length}
		if x.Flags&wire.FlagFUA != 0 {
			r.Flags |= nbd.CmdFlagFUA
		}
		if x.Op == wire.OpWriteZeroes && x.Flags&wire.FlagNoUnmap != 0 {
			r.Flags |= nbd.CmdFlagNoHole
		}
		h := nbd.AppendRequest(x.Header[:0], r)
		c.snd.Queue(h)
		if x.Op == wire.OpWrite {
			c.snd.Queue(x.Buf)
		}
	}
	if rd.Ping {
		h := nbd.AppendRequest(c.pingHdr[:0], nbd.Request{Type: nbd.CmdRead, Cookie: rd.PingID, Length: c.nbdPing()})
		c.snd.Queue(h)
	}
	if rd.Disconnect {
		h := nbd.AppendRequest(c.discHdr[:0], nbd.Request{Type: nbd.CmdDisc})
		c.snd.Queue(h)
	}
}

// errNBDShutdown: the server answered ESHUTDOWN, it is going away; what it
// did not answer is resent on the next connection.
var errNBDShutdown = errors.New("the NBD server is shutting down (ESHUTDOWN)")

// parseNBD consumes complete simple replies from the staging buffer, READ
// data straight into the request's buffer, then keeps a RECV in flight.
// With simple replies the length of a READ's data is known only from the
// request, so a reply whose cookie the engine does not know cannot be
// skipped: the stream is lost and the connection is closed (the engine
// resends what is unanswered). In NBD mode that only happens with a broken
// server, since a transaction completes without its reply only after its
// connection was closed (Config.NoSession).
func (c *Conn) parseNBD() {
	for !c.partial && !c.closing {
		b := c.rcv.Buffered()
		if len(b) < nbd.SimpleReplyLen {
			break
		}
		nr, _, err := nbd.ParseReply(b[:nbd.SimpleReplyLen])
		if err == nil && nr.Structured {
			err = errors.New("nbd: a structured reply, which was not negotiated")
		}
		if err != nil {
			c.shutdown(err)
			return
		}
		c.rcv.Consume(nbd.SimpleReplyLen)
		r, n, err := c.nbdReply(nr)
		if err != nil {
			c.shutdown(err)
			return
		}
		if !c.receive(r, n) {
			return
		}
	}
	c.keepReceiving()
}

// nbdReply translates a simple reply into the engine's terms: the reply
// and the length of the data that follows it.
func (c *Conn) nbdReply(nr nbd.Reply) (wire.Reply, int, error) {
	if nr.Errno == nbd.ESHUTDOWN {
		return wire.Reply{}, 0, errNBDShutdown
	}
	st := wire.Status(0)
	if nr.Errno != 0 {
		st = wire.Status(nbdErrno(nr.Errno))
	}
	if nr.Cookie&PingBit != 0 {
		r := wire.Reply{Op: wire.OpPing, ID: nr.Cookie, Status: st}
		if st != 0 {
			return r, 0, nil
		}
		return r, int(c.nbdPing()), nil
	}
	x := c.e.tab.get(nr.Cookie)
	if x == nil {
		return wire.Reply{}, 0, fmt.Errorf("nbd: reply for cookie %#x, which is not in flight", nr.Cookie)
	}
	r := wire.Reply{Op: x.Op, ID: nr.Cookie, Status: st}
	if x.Op == wire.OpRead && st == 0 {
		r.Length = x.Length
		return r, int(x.Length), nil
	}
	return r, 0, nil
}

// nbdErrno is the errno the block layer gets for an NBD error: the
// protocol's values are Linux's; anything unknown is EIO.
func nbdErrno(e nbd.Errno) syscall.Errno {
	switch e {
	case nbd.EPERM, nbd.EIO, nbd.ENOMEM, nbd.EINVAL, nbd.ENOSPC, nbd.EOVERFLOW:
		return syscall.Errno(e)
	case nbd.ENOTSUP:
		return syscall.EOPNOTSUPP
	}
	return syscall.EIO
}
