package export

// The NBD exporter: the same exports and access list as the DST listener,
// spoken over the NBD protocol (internal/nbd) to standard clients
// (nbdinfo, nbdcopy, qemu, fio's nbd engine, the kernel's nbd-client).
//
// # Design: one ring per connection, goroutines for TLS
//
// A plain NBD connection on a socket runs its transmission phase like a
// DST connection: one locked thread with its own io_uring ring receives,
// executes and replies (nbd_ring.go, which explains the loop and why). A
// connection the ring cannot serve (TLS, whose bytes crypto/tls must
// see; a net.Conn without a descriptor; no io_uring) is served by:
//
//	reader (the connection's goroutine)  header → checks → payload read
//	        → backend.Worker.Submit (or an immediate error reply)
//	Worker  its own ring (SingleIssuer, DeferTaskrun), on its own locked
//	        thread: the export's backend.File executes READ, WRITE (FUA),
//	        FLUSH, TRIM (discard) and WRITE_ZEROES exactly as for DST
//	        clients, with the same sync fallbacks and storage faults
//	writer  replies in completion order (out of order with respect to
//	        the requests), batched into one writev
//
// That costs two wake-ups per request more than the ring. At depth 1
// they are most of a request's cost, so a request that arrives with
// nothing else in flight and nothing more buffered is executed on the
// reader itself (blocking pread/pwrite, fdatasync or fallocate through
// backend.File.Sync) and answered at once; as soon as requests overlap
// they go to the Worker. Both paths share the negotiation, the checks of
// dispatch, the read-modify-write of unaligned requests and the reply
// encoding. Many requests are in flight per connection (up to
// Config.MaxInflight, and at most Config.MaxBufferBytes of buffers:
// beyond either the connection stops reading); each completes on its
// own and is answered at once.
//
// # Unaligned requests
//
// Offsets and lengths are in bytes in NBD. INFO_BLOCK_SIZE advertises the
// export's logical block as the minimum (what O_DIRECT needs), 4 KiB or
// the physical block as preferred, and the exporter's MaxTransfer as the
// maximum. A client that asked for INFO_BLOCK_SIZE in its GO agreed to
// them: its misaligned READ, WRITE or WRITE_ZEROES, or a READ or WRITE
// longer than the maximum, gets EINVAL. A client that did not
// (EXPORT_NAME, or GO without INFO_BLOCK_SIZE: older or simpler clients;
// qemu asks and aligns by itself) is served byte-granular: an unaligned
// READ reads the covering
// blocks and answers the slice; an unaligned WRITE or WRITE_ZEROES is a
// read-modify-write of the partial edge blocks, done synchronously and
// under one lock per export, so two unaligned writes that share a block
// (which the client may send concurrently: they do not overlap in bytes)
// never lose each other's bytes. An aligned write that shares a block
// with an unaligned one overlaps it in bytes, which NBD clients must not
// send concurrently. Their payload may be up to 32 MiB (nbd.MaxPayload).
// An unaligned TRIM is advisory: it is shrunk to the blocks it covers
// (nothing if none).
//
// # Replies, errors and violations
//
// With structured replies a successful READ is one OFFSET_DATA chunk and
// any error one ERROR chunk with a message (both with the DONE flag);
// other successes are simple replies, as the spec allows. Per-request
// errors keep the connection: EPERM (writes on a read-only session,
// which also sees READ_ONLY), EINVAL (misaligned for an agreeing client,
// too long, past the end for reads, unknown commands or flags, FLUSH with
// a range), ENOSPC (writes past the end), ENOTSUP (FAST_ZERO that cannot
// be fast: with NO_HOLE, unaligned, or on a block device), EIO and the
// storage's other errors. A wrong request magic or a WRITE payload over
// 32 MiB breaks the stream: that connection is closed, nothing else.
//
// # Flags
//
// HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM (if the file can punch holes
// or the device discard), SEND_WRITE_ZEROES, SEND_FAST_ZERO (regular files
// that can punch holes: without NO_HOLE a write-zeroes is a hole punch),
// SEND_CACHE (answered at once: O_DIRECT has no cache to fill), and
// CAN_MULTI_CONN: every connection works on the same file, a completed
// write is visible to every later read, and FLUSH is fdatasync of the
// whole file, so a flush on one connection covers the writes completed on
// all of them. READ_ONLY for read-only exports and ro access.
//
// # Idle connections
//
// Config.IdleTimeout does not apply: NBD has no ping, and an idle kernel
// nbd device or qemu drive legitimately sends nothing for hours. A peer
// that vanished is found by TCP keep-alive (transport.DefaultKeepAlive)
// and its connection ends like any lost one.
//
// # TLS
//
// With NBDOptions.TLS the negotiation accepts STARTTLS (internal/nbd
// NegotiateServer) and the connection then reads and writes through the
// *tls.Conn (rw), while deadlines and Close act on the accepted
// connection underneath (nc). RequireTLS refuses everything else first.
//
// Client certificates: when the TLS config verifies them (ClientCAs with
// VerifyClientCertIfGiven or RequireAndVerifyClientCert), crypto/tls
// refuses one that does not verify (the handshake fails, the connection
// closes), and the identities of one that does (subject CN, DNS SANs) are
// taken in VerifyConnection, on the connection's goroutine, before any
// export is looked up. The access list's cert:NAME rules then decide
// (ACL; the best access of the rules naming one of them), and a client
// without a certificate, or with one no rule names, is judged by its
// address. A peer whose address is on no rule is therefore not closed at
// accept when there are cert: rules and certificates are verified: it
// must start TLS (RequireTLS for that connection), and is refused
// NBD_REP_ERR_POLICY unless its certificate is named.
//
// Shutdown stops reading, finishes and answers what is in flight, then
// closes (NBD has no GOODBYE; clients see the connection end).

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/metrics"
	"github.com/dst-dev/dst/internal/nbd"
)

// nbdWriteTimeout bounds each reply write once the server is stopping, so
// that a client that stopped reading cannot hold Shutdown.
const nbdWriteTimeout = 10 * time.Second

// NBDOptions configure an NBD listener (ServeNBDWith).
type NBDOptions struct {
	// TLS, if set, lets clients upgrade with STARTTLS (server
	// certificate). With ClientAuth VerifyClientCertIfGiven or
	// RequireAndVerifyClientCert and ClientCAs, client certificates are
	// verified (one that does not verify fails the TLS handshake, which
	// closes the connection) and their identities are matched against the
	// access list's cert:NAME rules (ACL).
	TLS *tls.Config
	// GetTLS, if set, is called for each connection instead of reading
	// TLS, so that certificates can be replaced while serving (a reload).
	// A nil result means no TLS for that connection.
	GetTLS func() *tls.Config
	// RequireTLS refuses every option but STARTTLS and ABORT until TLS is
	// up (NBD_REP_ERR_TLS_REQD). Needs TLS or GetTLS.
	RequireTLS bool
}

func (o *NBDOptions) tlsConfig() *tls.Config {
	if o.GetTLS != nil {
		return o.GetTLS()
	}
	return o.TLS
}

// verifiesClients: cfg asks for client certificates and checks them.
func verifiesClients(cfg *tls.Config) bool {
	return cfg != nil && cfg.ClientCAs != nil &&
		(cfg.ClientAuth == tls.VerifyClientCertIfGiven || cfg.ClientAuth == tls.RequireAndVerifyClientCert)
}

// certIdentities are the names of a verified client certificate that
// cert:NAME rules match: the subject common name and the DNS names.
func certIdentities(cs tls.ConnectionState) []string {
	if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return nil
	}
	leaf := cs.PeerCertificates[0]
	ids := make([]string, 0, 1+len(leaf.DNSNames))
	if leaf.Subject.CommonName != "" {
		ids = append(ids, leaf.Subject.CommonName)
	}
	return append(ids, leaf.DNSNames...)
}

// ServeNBD accepts NBD clients on l until ctx ends or Shutdown begins,
// then closes l. It applies the access list like Serve (peers not on it
// are closed at accept) and serves the same exports. Several ServeNBD and
// Serve calls may run at once.
func (s *Server) ServeNBD(ctx context.Context, l net.Listener) error {
	return s.ServeNBDWith(ctx, l, NBDOptions{})
}

// ServeNBDWith is ServeNBD with options (TLS).
func (s *Server) ServeNBDWith(ctx context.Context, l net.Listener, o NBDOptions) error {
	if o.RequireTLS && o.TLS == nil && o.GetTLS == nil {
		l.Close()
		return errors.New("export: NBD RequireTLS without a TLS config")
	}
	return s.serveListener(ctx, l, "listening (NBD)", func(nc net.Conn) { s.acceptNBD(nc, o) })
}

func (s *Server) acceptNBD(nc net.Conn, o NBDOptions) {
	p := peerOf(nc)
	acl := s.acl.Load()
	access, rule := acl.lookup(p)
	tlsCfg := o.tlsConfig()
	if access == Deny && !(acl.hasCertRules() && verifiesClients(tlsCfg)) {
		s.log.Warn("NBD connection refused: peer is not on the access list", zap.String("peer", p.desc), zap.String("rule", rule))
		nc.Close()
		return
	}
	if access == Deny {
		// Its address admits it to nothing, but a client certificate may:
		// it must start TLS, and the export is granted only to a
		// certificate a cert: rule names (nbdHandler.Export).
		o.RequireTLS = true
	}
	if o.RequireTLS && tlsCfg == nil {
		s.log.Warn("NBD connection refused: TLS is required but no certificate is loaded", zap.String("peer", p.desc))
		nc.Close()
		return
	}
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.wg.Add(1)
	s.nbdOpen.Add(1)
	s.mu.Unlock()
	c := &nbdConn{
		srv:  s,
		nc:   nc,
		rw:   nc,
		opts: o,
		peer: p,
		log:  s.log.With(zap.Uint64("conn", s.connSeq.Add(1)), zap.String("peer", p.desc), zap.String("proto", "nbd")),
	}
	if verifiesClients(tlsCfg) {
		// The identities of a verified client certificate, taken during
		// the TLS handshake (on this connection's goroutine, before any
		// export is looked up).
		tlsCfg = tlsCfg.Clone()
		prev := tlsCfg.VerifyConnection
		tlsCfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if prev != nil {
				if err := prev(cs); err != nil {
					return err
				}
			}
			c.certIDs = certIdentities(cs)
			return nil
		}
	}
	c.tlsCfg = tlsCfg
	go c.serve()
}

// nbdConn is one NBD client connection.
type nbdConn struct {
	srv    *Server
	nc     net.Conn // the accepted connection: deadlines, Close
	rw     net.Conn // what requests and replies travel on: nc, or TLS over it
	opts   NBDOptions
	tlsCfg *tls.Config // this connection's: nil, or opts' with the identity capture
	peer   peer
	// certIDs: the identities of the client's verified TLS certificate
	// (none without one), for the access list's cert: rules.
	certIDs []string
	log     *zap.Logger

	// Set by the handshake, then read-only.
	exp      *export
	neg      *nbd.Negotiated
	readOnly bool
	fastZero bool
	lbs      uint64
	maxLen   uint32 // longest READ/WRITE/WRITE_ZEROES accepted
	worker   *backend.Worker

	slots   chan struct{} // one per request admitted and not yet answered
	replies chan *nbdReq  // to the writer; capacity = slots: never blocks

	bufMu   sync.Mutex
	bufCond sync.Cond
	bufUsed int64
	bufMax  int64

	rd  *bufio.Reader // the reader's: Buffered says whether a request waits
	wmu sync.Mutex    // serialises reply writes (writer, inline requests)
	iov [][]byte      // the reader's, for inline replies

	syncWG     sync.WaitGroup // read-modify-write goroutines
	writerDone chan struct{}

	// ring is set when the transmission phase runs on a ring
	// (nbd_ring.go): replies and storage operations go through it, and
	// kick wakes its loop (Shutdown).
	ring     *nbdRing
	kick     atomic.Pointer[func()]
	broken   atomic.Bool // a reply write failed: the connection is closing
	stopping atomic.Bool
	aborted  atomic.Bool // SetAccess revoked the connection's access
}

// nbdReq is one request from header to reply.
type nbdReq struct {
	c      *nbdConn
	r      nbd.Request
	br     backend.Request
	buf    []byte // the I/O buffer (pooled when pooled != nil)
	pooled *buffer
	charge int64  // bytes charged to the connection's buffer budget
	data   []byte // READ reply data
	errno  nbd.Errno
	msg    string
	hdr    [32]byte
	// Metrics: the op counted (NumOps: none), when it was parsed, and
	// whether its reply was queued (a request dropped unanswered counts
	// as failed).
	mop     metrics.Op
	start   int64
	replied bool
	// syncHelper: on a ring connection's sync helper (nbd_ring.go).
	syncHelper bool
}

var nbdReqPool = sync.Pool{New: func() any { return new(nbdReq) }}

func (c *nbdConn) serve() {
	s := c.srv
	defer s.wg.Done()
	defer s.nbdOpen.Add(-1)
	defer c.nc.Close()
	watchDone := make(chan struct{})
	watched := make(chan struct{})
	go func() { // stops the reader when the server stops; waited for below
		defer close(watched)
		select {
		case <-s.stopCh:
			c.stopping.Store(true)
			if k := c.kick.Load(); k != nil {
				(*k)() // the ring loop; it checks stopping after setting kick
			}
			_ = c.nc.SetReadDeadline(time.Now())
			_ = c.nc.SetWriteDeadline(time.Now().Add(nbdWriteTimeout))
		case <-watchDone:
		}
	}()
	defer func() {
		close(watchDone)
		<-watched
	}()
	if !c.handshake() {
		return
	}
	defer s.unpinExport(c.exp) // pinned by the handshake (reload.go)
	c.exp.nbdConns.Add(1)
	defer c.exp.nbdConns.Add(-1)
	if !s.registerNBD(c) {
		c.log.Info("NBD handshake: the access list changed")
		return
	}
	defer s.unregisterNBD(c)
	if c.ringable() && c.serveRing() {
		return
	}
	depth := min(int(s.cfg.MaxInflight), 128)
	w, err := backend.NewWorker(depth)
	if err != nil {
		c.log.Error("cannot start the connection's I/O ring", zap.Error(err))
		return
	}
	c.worker = w
	c.slots = make(chan struct{}, s.cfg.MaxInflight)
	c.replies = make(chan *nbdReq, s.cfg.MaxInflight)
	c.bufMax = s.cfg.MaxBufferBytes
	c.bufCond.L = &c.bufMu
	c.writerDone = make(chan struct{})
	go c.writer()

	err = c.readLoop()
	switch {
	case err == nil:
	case c.stopping.Load():
		c.log.Info("NBD connection stops reading: exporter shutting down")
	case errors.Is(err, io.EOF):
		c.log.Info("NBD connection closed by the client")
	default:
		var pe *nbd.ProtocolError
		if errors.As(err, &pe) {
			c.log.Warn("closing NBD connection: protocol error", zap.Error(err))
		} else if !c.broken.Load() {
			c.log.Info("NBD connection lost", zap.Error(err))
		}
	}
	// Everything admitted completes and is answered (or dropped if the
	// socket broke) before the connection closes.
	c.syncWG.Wait()
	if err := c.worker.Close(); err != nil {
		c.log.Warn("NBD connection's I/O ring", zap.Error(err))
	}
	close(c.replies)
	<-c.writerDone
}

// handshake negotiates the export under HandshakeTimeout.
func (c *nbdConn) handshake() bool {
	_ = c.nc.SetDeadline(time.Now().Add(HandshakeTimeout))
	h := nbdHandler{c: c}
	rw, neg, err := nbd.NegotiateServer(c.nc, h, nbd.ServerOptions{TLS: c.tlsCfg, RequireTLS: c.opts.RequireTLS})
	if err != nil {
		if errors.Is(err, nbd.ErrAborted) {
			c.log.Debug("NBD client ended the negotiation")
		} else {
			c.log.Info("NBD handshake failed", zap.Error(err))
		}
		return false
	}
	_ = c.nc.SetDeadline(time.Time{})
	if c.stopping.Load() { // the watcher's deadline may just have been cleared
		return false
	}
	c.rw = rw
	_, isTLS := rw.(*tls.Conn)
	e := c.srv.lookupNBD(neg.Export.Name)
	if e == nil || !c.srv.pinExport(e) { // removed by a reload meanwhile
		c.log.Info("NBD handshake: the export was removed", zap.String("export", neg.Export.Name))
		return false
	}
	access, rule := c.access()
	if access == Deny { // the list changed since the export was granted
		c.log.Info("NBD handshake: the access list changed", zap.String("rule", rule))
		c.srv.unpinExport(e)
		return false
	}
	c.exp, c.neg = e, neg
	c.readOnly = neg.Export.Flags&nbd.FlagReadOnly != 0 || access != ReadWrite
	c.fastZero = neg.Export.Flags&nbd.FlagSendFastZero != 0
	c.lbs = uint64(e.file.LogicalBlockSize())
	c.maxLen = nbd.MaxPayload
	if neg.BlockSizeAgreed {
		c.maxLen = neg.Export.MaxBlock
	}
	c.log = c.log.With(zap.String("export", e.cfg.Name))
	c.log.Info("NBD client attached", zap.Uint64("size", neg.Export.Size), zap.Stringer("flags", neg.Export.Flags),
		zap.Bool("structured", neg.Structured), zap.Bool("block_size_agreed", neg.BlockSizeAgreed),
		zap.Stringer("via", neg.Via), zap.Bool("read_only", c.readOnly), zap.Bool("tls", isTLS),
		zap.Strings("cert", c.certIDs), zap.String("rule", rule))
	return true
}

// registerNBD makes c known to SetAccess, unless the access list (which
// SetAccess replaces under s.mu) no longer grants what the handshake did.
func (s *Server) registerNBD(c *nbdConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, _ := c.access(); a == Deny || a == ReadOnly && !c.readOnly {
		return false
	}
	if s.nbdConns == nil {
		s.nbdConns = map[*nbdConn]struct{}{}
	}
	s.nbdConns[c] = struct{}{}
	return true
}

func (s *Server) unregisterNBD(c *nbdConn) {
	s.mu.Lock()
	delete(s.nbdConns, c)
	s.mu.Unlock()
}

// revokeNBDLocked returns the NBD connections whose access t reduces
// (denied, or read-only for a connection that may write). s.mu is held.
func (s *Server) revokeNBDLocked(t *aclTable) []*nbdConn {
	var out []*nbdConn
	for c := range s.nbdConns {
		if a, _ := t.lookupCert(c.peer, c.certIDs); a == Deny || a == ReadOnly && !c.readOnly {
			out = append(out, c)
		}
	}
	return out
}

// abort closes c at once (SetAccess): nothing more is read or answered;
// what is executing completes first.
func (c *nbdConn) abort() {
	c.aborted.Store(true)
	if k := c.kick.Load(); k != nil {
		(*k)() // the ring loop sees aborted
		return
	}
	_ = c.nc.Close() // the reader and writer fail (also under TLS)
}

// access is the peer's access under the current list: by its client
// certificate's identities if a cert: rule names one, else by address.
func (c *nbdConn) access() (Access, string) {
	return c.srv.acl.Load().lookupCert(c.peer, c.certIDs)
}

// lookupNBD finds an export by NBD name: the empty name (the NBD default
// export) is the only export when there is exactly one.
func (s *Server) lookupNBD(name string) *export {
	s.mu.Lock() // exports change on reloads (reload.go)
	defer s.mu.Unlock()
	if name == "" && len(s.list) == 1 {
		return s.list[0]
	}
	return s.exports[name]
}

type nbdHandler struct{ c *nbdConn }

func (h nbdHandler) Exports() []nbd.ExportInfo {
	s := h.c.srv
	s.mu.Lock() // exports change on reloads (reload.go)
	list := slices.Clone(s.list)
	s.mu.Unlock()
	out := make([]nbd.ExportInfo, 0, len(list))
	for _, e := range list {
		out = append(out, h.c.info(e))
	}
	return out
}

func (h nbdHandler) Export(name string) (nbd.ExportInfo, error) {
	s := h.c.srv
	s.mu.Lock()
	stopping := s.stopping
	s.mu.Unlock()
	if stopping {
		return nbd.ExportInfo{}, nbd.ErrShutdown
	}
	// The list again: SetAccess may have changed it since accept, and a
	// client certificate may have been presented since (STARTTLS).
	if a, _ := h.c.access(); a == Deny {
		if len(h.c.certIDs) > 0 {
			return nbd.ExportInfo{}, fmt.Errorf("%s with certificate %q is not on the access list: %w", h.c.peer.desc, h.c.certIDs, nbd.ErrPolicy)
		}
		return nbd.ExportInfo{}, fmt.Errorf("%s is not on the access list: %w", h.c.peer.desc, nbd.ErrPolicy)
	}
	e := s.lookupNBD(name)
	if e == nil {
		return nbd.ExportInfo{}, fmt.Errorf("no export named %q here: %w", name, nbd.ErrUnknownExport)
	}
	return h.c.info(e), nil
}

// info is what this peer is told about e.
func (c *nbdConn) info(e *export) nbd.ExportInfo {
	access, _ := c.access()
	ro := e.cfg.ReadOnly || access != ReadWrite
	caps := e.file.Caps()
	f := nbd.FlagSendCache | nbd.FlagCanMultiConn
	if caps.Flush {
		f |= nbd.FlagSendFlush
	}
	if ro {
		f |= nbd.FlagReadOnly
	} else {
		if caps.FUA {
			f |= nbd.FlagSendFUA
		}
		if caps.Discard {
			f |= nbd.FlagSendTrim
		}
		if caps.WriteZeroes {
			f |= nbd.FlagSendWriteZeroes
			if caps.Discard && !e.file.IsBlockDevice() {
				f |= nbd.FlagSendFastZero
			}
		}
	}
	lbs := e.file.LogicalBlockSize()
	return nbd.ExportInfo{
		Name:      e.cfg.Name,
		Size:      e.file.Size(),
		Flags:     f,
		MinBlock:  lbs,
		PrefBlock: max(e.physicalBlock, lbs, 4096),
		MaxBlock:  e.maxTransfer,
	}
}

// readLoop reads and dispatches requests until EOF, DISC, an error or
// shutdown. It returns nil after DISC.
func (c *nbdConn) readLoop() error {
	br := bufio.NewReaderSize(c.rw, 64<<10)
	c.rd = br
	var hb [nbd.RequestLen]byte
	for {
		if _, err := io.ReadFull(br, hb[:]); err != nil {
			return fmt.Errorf("read request: %w", err)
		}
		r, err := nbd.ParseRequest(hb[:])
		if err != nil {
			return err
		}
		if r.Type == nbd.CmdDisc {
			c.log.Info("NBD client disconnects")
			return nil
		}
		if r.Type == nbd.CmdWrite && r.Length > nbd.MaxPayload {
			return &nbd.ProtocolError{What: "WRITE", Reason: fmt.Sprintf("payload of %d bytes exceeds %d", r.Length, nbd.MaxPayload)}
		}
		c.slots <- struct{}{} // backpressure: the writer frees slots
		q := c.newReq(r)
		if r.Type == nbd.CmdWrite {
			c.getBuf(q, uint64(r.Length), r.Offset, r.Length)
			if _, err := io.ReadFull(br, q.data); err != nil {
				c.release(q)
				return fmt.Errorf("read WRITE payload: %w", err)
			}
		}
		c.dispatch(q)
	}
}

// newReq returns a request for r, counted in the metrics from now.
func (c *nbdConn) newReq(r nbd.Request) *nbdReq {
	q := nbdReqPool.Get().(*nbdReq)
	*q = nbdReq{c: c, r: r, mop: nbdMetricsOp(r.Type)}
	if q.mop < metrics.NumOps {
		q.start = metrics.Now()
		c.exp.nbdIO.Start()
	}
	return q
}

// getBuf gives q an aligned buffer of n bytes (charged to the budget,
// waiting while the connection holds too much) and points q.data at the
// off/length slice of it: the whole buffer for an aligned request, the
// client's bytes inside the covering blocks for an unaligned one.
func (c *nbdConn) getBuf(q *nbdReq, n, off uint64, length uint32) {
	c.bufMu.Lock()
	// A ring loop checked the budget before admitting q (nbdRing.fits)
	// and must not sleep here.
	for c.ring == nil && c.bufUsed > 0 && c.bufUsed+int64(n) > c.bufMax {
		c.bufCond.Wait()
	}
	c.bufUsed += int64(n)
	c.bufMu.Unlock()
	q.charge = int64(n)
	if n <= 1<<maxBufShift && n > 0 {
		q.pooled = c.srv.bufs.get(int(n))
		q.buf = q.pooled.b[:n]
	} else {
		q.buf = alignedBytes(int(max(n, 1)))[:n]
	}
	skew := off % c.lbs
	if n == uint64(length) {
		skew = 0
	}
	q.data = q.buf[skew : skew+uint64(length)]
}

// release gives back q's buffer, budget and slot, and counts q.
func (c *nbdConn) release(q *nbdReq) {
	if q.mop < metrics.NumOps {
		c.exp.nbdIO.Done(q.mop, q.r.Length, metrics.Now()-q.start, q.errno != 0 || !q.replied)
	}
	if q.charge != 0 {
		c.bufMu.Lock()
		c.bufUsed -= q.charge
		c.bufMu.Unlock()
		c.bufCond.Broadcast()
	}
	if q.pooled != nil {
		c.srv.bufs.put(q.pooled)
	}
	*q = nbdReq{}
	nbdReqPool.Put(q)
	if c.ring == nil {
		<-c.slots
	}
}

// reply hands q to the writer with errno (0: success).
func (c *nbdConn) reply(q *nbdReq, errno nbd.Errno, msg string) {
	q.errno, q.msg = errno, msg
	if c.ring != nil {
		c.ring.queue(q)
		return
	}
	c.replies <- q
}

func (c *nbdConn) fail(q *nbdReq, errno nbd.Errno, format string, args ...any) {
	c.reply(q, errno, fmt.Sprintf(format, args...))
}

const nbdWriteFlags = nbd.CmdFlagFUA

// dispatch checks q and starts it: on the Worker, on a read-modify-write
// goroutine, or answered at once.
func (c *nbdConn) dispatch(q *nbdReq) {
	r := q.r
	size := c.exp.file.Size()
	end := r.Offset + uint64(r.Length)
	overflow := end < r.Offset
	aligned := (r.Offset|uint64(r.Length))%c.lbs == 0
	switch r.Type {
	case nbd.CmdRead:
		switch {
		case r.Flags&^nbd.CmdFlagFUA != 0:
			c.fail(q, nbd.EINVAL, "READ with unsupported flags %#x", uint16(r.Flags))
		case r.Length > c.maxLen:
			c.fail(q, nbd.EINVAL, "READ of %d bytes exceeds the maximum %d", r.Length, c.maxLen)
		case overflow || end > size:
			c.fail(q, nbd.EINVAL, "READ of %d bytes at %d ends beyond the %d-byte export", r.Length, r.Offset, size)
		case r.Length == 0:
			c.reply(q, 0, "")
		case !aligned && c.neg.BlockSizeAgreed:
			c.fail(q, nbd.EINVAL, "READ of %d bytes at %d is not aligned to the %d-byte minimum block size", r.Length, r.Offset, c.lbs)
		default:
			start := r.Offset / c.lbs * c.lbs
			n := (end+c.lbs-1)/c.lbs*c.lbs - start
			c.getBuf(q, n, r.Offset, r.Length)
			c.submit(q, backend.OpRead, 0, start, q.buf, uint32(n))
		}
	case nbd.CmdWrite:
		switch {
		case c.readOnly:
			c.fail(q, nbd.EPERM, "WRITE on a read-only export or connection")
		case r.Flags&^nbdWriteFlags != 0:
			c.fail(q, nbd.EINVAL, "WRITE with unsupported flags %#x", uint16(r.Flags))
		case r.Length > c.maxLen:
			c.fail(q, nbd.EINVAL, "WRITE of %d bytes exceeds the maximum %d", r.Length, c.maxLen)
		case overflow || end > size:
			c.fail(q, nbd.ENOSPC, "WRITE of %d bytes at %d ends beyond the %d-byte export", r.Length, r.Offset, size)
		case r.Length == 0:
			c.reply(q, 0, "")
		case aligned:
			c.submit(q, backend.OpWrite, fua(r.Flags), r.Offset, q.buf, r.Length)
		case c.neg.BlockSizeAgreed:
			c.fail(q, nbd.EINVAL, "WRITE of %d bytes at %d is not aligned to the %d-byte minimum block size", r.Length, r.Offset, c.lbs)
		default:
			c.startRMW(q)
		}
	case nbd.CmdFlush:
		switch {
		case r.Flags&^nbd.CmdFlagFUA != 0:
			c.fail(q, nbd.EINVAL, "FLUSH with unsupported flags %#x", uint16(r.Flags))
		case r.Offset != 0 || r.Length != 0:
			c.fail(q, nbd.EINVAL, "FLUSH with offset %d and length %d (both must be 0)", r.Offset, r.Length)
		default:
			c.submit(q, backend.OpFlush, 0, 0, nil, 0)
		}
	case nbd.CmdTrim:
		start := (r.Offset + c.lbs - 1) / c.lbs * c.lbs
		stop := end / c.lbs * c.lbs
		switch {
		case c.readOnly:
			c.fail(q, nbd.EPERM, "TRIM on a read-only export or connection")
		case !c.exp.file.Caps().Discard:
			c.fail(q, nbd.EINVAL, "TRIM is not supported by this export")
		case r.Flags&^nbd.CmdFlagFUA != 0:
			c.fail(q, nbd.EINVAL, "TRIM with unsupported flags %#x", uint16(r.Flags))
		case overflow || end > size:
			c.fail(q, nbd.EINVAL, "TRIM of %d bytes at %d ends beyond the %d-byte export", r.Length, r.Offset, size)
		case stop <= start:
			c.reply(q, 0, "") // advisory, and no whole block in it
		default:
			c.submit(q, backend.OpDiscard, fua(r.Flags), start, nil, uint32(stop-start))
		}
	case nbd.CmdWriteZeroes:
		flags := fua(r.Flags)
		if r.Flags&nbd.CmdFlagNoHole != 0 {
			flags |= backend.FlagNoUnmap
		}
		fast := r.Flags&nbd.CmdFlagFastZero != 0
		switch {
		case c.readOnly:
			c.fail(q, nbd.EPERM, "WRITE_ZEROES on a read-only export or connection")
		case r.Flags&^(nbd.CmdFlagFUA|nbd.CmdFlagNoHole|nbd.CmdFlagFastZero) != 0, fast && !c.fastZero:
			c.fail(q, nbd.EINVAL, "WRITE_ZEROES with unsupported flags %#x", uint16(r.Flags))
		case overflow || end > size:
			c.fail(q, nbd.ENOSPC, "WRITE_ZEROES of %d bytes at %d ends beyond the %d-byte export", r.Length, r.Offset, size)
		case r.Length == 0:
			c.reply(q, 0, "")
		case fast && (r.Flags&nbd.CmdFlagNoHole != 0 || !aligned):
			c.fail(q, nbd.ENOTSUP, "a fast WRITE_ZEROES needs a hole punch: not with NO_HOLE or unaligned ranges")
		case aligned:
			c.submit(q, backend.OpWriteZeroes, flags, r.Offset, nil, r.Length)
		case c.neg.BlockSizeAgreed:
			c.fail(q, nbd.EINVAL, "WRITE_ZEROES of %d bytes at %d is not aligned to the %d-byte minimum block size", r.Length, r.Offset, c.lbs)
		default:
			c.startRMW(q)
		}
	case nbd.CmdCache:
		switch {
		case r.Flags&^nbd.CmdFlagFUA != 0:
			c.fail(q, nbd.EINVAL, "CACHE with unsupported flags %#x", uint16(r.Flags))
		case overflow || end > size:
			c.fail(q, nbd.EINVAL, "CACHE of %d bytes at %d ends beyond the %d-byte export", r.Length, r.Offset, size)
		default:
			c.reply(q, 0, "") // O_DIRECT: there is no cache to fill
		}
	default:
		c.fail(q, nbd.EINVAL, "command %v is not supported", r.Type)
	}
}

func fua(f nbd.CmdFlags) backend.Flags {
	if f&nbd.CmdFlagFUA != 0 {
		return backend.FlagFUA
	}
	return 0
}

func (c *nbdConn) submit(q *nbdReq, op backend.Op, flags backend.Flags, off uint64, buf []byte, n uint32) {
	if c.ring != nil {
		c.ring.start(q, op, flags, off, buf, n)
		return
	}
	if len(c.slots) == 1 && c.rd.Buffered() == 0 {
		// Nothing else in flight and no request waiting: executing it here
		// on the reader (a blocking pread/pwrite/fdatasync/fallocate) and
		// replying at once saves the wake-ups of the Worker's thread and of
		// the writer, which is most of a request's cost at depth 1. The
		// next request cannot be read meanwhile, but there is none yet.
		f := c.exp.file
		err := f.Check(op, flags, off, n)
		if err == nil {
			err = f.Sync(op, flags, off, buf, n)
		}
		c.result(q, err)
		c.iov = c.appendReply(c.iov[:0], q)
		c.writeReplies(c.iov)
		clear(c.iov)
		c.release(q)
		return
	}
	q.br = backend.Request{File: c.exp.file, Op: op, Flags: flags, Off: off, Buf: buf, Length: n, Done: nbdDone, Ctx: q}
	if err := c.worker.Submit(&q.br); err != nil {
		c.fail(q, nbd.EIO, "submit: %v", err)
	}
}

// nbdDone runs on the Worker's goroutine.
func nbdDone(br *backend.Request, err error) {
	q := br.Ctx.(*nbdReq)
	q.c.done(q, err)
}

// done answers q with the result of its storage operation. The client
// gets the errno and a generic message; the details (paths) are logged.
func (c *nbdConn) done(q *nbdReq, err error) {
	c.result(q, err)
	c.replies <- q
}

// result sets q's reply from the result of its storage operation.
func (c *nbdConn) result(q *nbdReq, err error) {
	if err == nil {
		q.errno, q.msg = 0, ""
		return
	}
	errno := nbd.FromErrno(backend.Errno(err))
	c.log.Warn("NBD request failed", zap.Stringer("cmd", q.r.Type), zap.Uint64("offset", q.r.Offset),
		zap.Uint32("length", q.r.Length), zap.Stringer("errno", errno), zap.Error(err))
	q.errno, q.msg = errno, "the export's storage failed: "+errno.String()
}

// rmwLocks serialise read-modify-writes per export (striped by the
// export's address; two exports sharing a stripe only wait for each
// other).
var rmwLocks [16]sync.Mutex

func (c *nbdConn) rmwLock() *sync.Mutex {
	return &rmwLocks[(uintptr(unsafe.Pointer(c.exp))>>6)%uintptr(len(rmwLocks))]
}

func (c *nbdConn) startRMW(q *nbdReq) {
	c.syncWG.Add(1)
	if g := c.ring; g != nil {
		g.ops++
		go func() { // owned by the connection: the loop waits for ops, teardown on syncWG
			defer c.syncWG.Done()
			c.result(q, c.rmw(q))
			g.post(q)
		}()
		return
	}
	go func() { // owned by the connection: serve waits on syncWG
		defer c.syncWG.Done()
		c.done(q, c.rmw(q))
	}()
}

// rmw performs an unaligned WRITE (q.data) or WRITE_ZEROES: the partial
// blocks at either edge are read, patched and written back with the
// whole blocks between, under the export's read-modify-write lock.
func (c *nbdConn) rmw(q *nbdReq) error {
	f, lbs := c.exp.file, c.lbs
	off, end := q.r.Offset, q.r.Offset+uint64(q.r.Length)
	start, stop := off/lbs*lbs, (end+lbs-1)/lbs*lbs
	flags := fua(q.r.Flags)
	mu := c.rmwLock()
	mu.Lock()
	defer mu.Unlock()
	if q.r.Type == nbd.CmdWrite {
		b := alignedBytes(int(stop - start))
		if err := f.Sync(backend.OpRead, 0, start, b[:lbs], uint32(lbs)); err != nil {
			return err
		}
		if last := stop - lbs; last > start && end%lbs != 0 {
			if err := f.Sync(backend.OpRead, 0, last, b[last-start:], uint32(lbs)); err != nil {
				return err
			}
		}
		copy(b[off-start:], q.data)
		return f.Sync(backend.OpWrite, flags, start, b, uint32(stop-start))
	}
	// WRITE_ZEROES: edge blocks by read-modify-write, whole blocks between
	// by the backend's write-zeroes.
	zflags := flags
	if q.r.Flags&nbd.CmdFlagNoHole != 0 {
		zflags |= backend.FlagNoUnmap
	}
	edge := func(blk uint64) error {
		b := alignedBytes(int(lbs))
		if err := f.Sync(backend.OpRead, 0, blk, b, uint32(lbs)); err != nil {
			return err
		}
		lo, hi := max(off, blk)-blk, min(end, blk+lbs)-blk
		clear(b[lo:hi])
		return f.Sync(backend.OpWrite, flags, blk, b, uint32(lbs))
	}
	inner0, inner1 := (off+lbs-1)/lbs*lbs, end/lbs*lbs
	if off%lbs != 0 {
		if err := edge(start); err != nil {
			return err
		}
	}
	// The tail block, unless the head's edge already was it.
	if end%lbs != 0 && (stop-lbs != start || off%lbs == 0) {
		if err := edge(stop - lbs); err != nil {
			return err
		}
	}
	if inner1 > inner0 {
		return f.Sync(backend.OpWriteZeroes, zflags, inner0, nil, uint32(inner1-inner0))
	}
	return nil
}

// writer sends the replies in the order they complete, batching what is
// ready into one writev, and gives back each request's resources.
func (c *nbdConn) writer() {
	defer close(c.writerDone)
	batch := make([]*nbdReq, 0, 64)
	iov := make([][]byte, 0, 192)
	for q := range c.replies {
		batch = append(batch[:0], q)
	more:
		for len(batch) < cap(batch) {
			select {
			case q2, ok := <-c.replies:
				if !ok {
					break more
				}
				batch = append(batch, q2)
			default:
				break more
			}
		}
		iov = iov[:0]
		for _, q := range batch {
			iov = c.appendReply(iov, q)
		}
		c.writeReplies(iov)
		clear(iov) // no buffer stays referenced
		for _, q := range batch {
			c.release(q)
		}
	}
}

// writeReplies writes iov (whole replies) unless the connection broke.
func (c *nbdConn) writeReplies(iov [][]byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.broken.Load() {
		return
	}
	if c.stopping.Load() {
		_ = c.nc.SetWriteDeadline(time.Now().Add(nbdWriteTimeout))
	}
	bufs := net.Buffers(iov)
	if _, err := bufs.WriteTo(c.rw); err != nil {
		c.broken.Store(true)
		c.log.Info("NBD connection lost while replying", zap.Error(err))
		c.nc.Close() // the reader ends too
	}
}

func (c *nbdConn) appendReply(iov [][]byte, q *nbdReq) [][]byte {
	r := q.r
	q.replied = true
	if q.errno != 0 {
		c.log.Debug("NBD request answered with an error", zap.Stringer("cmd", r.Type), zap.Stringer("errno", q.errno), zap.String("why", q.msg))
		if c.neg.Structured {
			return append(iov, nbd.AppendErrorChunk(nil, r.Cookie, q.errno, q.msg))
		}
		return append(iov, nbd.AppendSimpleReply(q.hdr[:0], q.errno, r.Cookie))
	}
	if r.Type != nbd.CmdRead || r.Length == 0 {
		return append(iov, nbd.AppendSimpleReply(q.hdr[:0], 0, r.Cookie))
	}
	if c.neg.Structured {
		return append(iov, nbd.AppendDataChunk(q.hdr[:0], r.Cookie, r.Offset, r.Length), q.data)
	}
	return append(iov, nbd.AppendSimpleReply(q.hdr[:0], 0, r.Cookie), q.data)
}
