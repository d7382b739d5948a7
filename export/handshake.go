package export

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/internal/uring"
	"github.com/dst-dev/dst/internal/wire"
)

// handshake reads the HELLO, answers WELCOME or REFUSE (PROTOCOL.md §2),
// and on success attaches the connection to a new or resumed session. The
// connection's deadline (HandshakeTimeout from accept) bounds it. It
// reads the HELLO without buffering, so that bytes a client sends after it
// are left in the socket for the loop.
//
// With crypto (PROTOCOL.md §8.2, §8.3) the HELLO and WELCOME are recorded
// as they go over the wire; the client's CRYPTO is checked after the
// access list and the export name; with a keyed suite the WELCOME is
// followed by the FINISHED exchange, and only once the client's FINISHED
// verifies is the session attached (a resume fences the previous
// connection only then): the WELCOME announces the token the session
// will have (peekSession).
func (c *conn) handshake() bool {
	s := c.srv
	hs, err := crypto.NewServer(s.cfg.Crypto)
	if err != nil { // checked by New
		c.log.Error("handshake: crypto", zap.Error(err))
		return false
	}
	var rec bytes.Buffer
	var hb [wire.HandshakeHeaderSize]byte
	if n, err := io.ReadFull(c.nc, hb[:]); err != nil {
		if n == 0 && err == io.EOF {
			c.log.Debug("closed before the handshake")
		} else {
			c.log.Info("handshake: no HELLO", zap.Error(err))
		}
		return false
	}
	// wire.ReadHello calls a version-0 HELLO malformed; PROTOCOL.md §2.5
	// and wire.NegotiateVersion make it "no common version".
	if binary.LittleEndian.Uint32(hb[0:4]) == wire.HandshakeMagic && wire.MsgType(hb[6]) == wire.MsgHello &&
		binary.LittleEndian.Uint16(hb[4:6]) == 0 {
		return c.refuse(wire.RefuseVersion, fmt.Sprintf("the HELLO asks for protocol version 0; this exporter speaks version %d", wire.Version))
	}
	hello, err := wire.ReadHello(io.TeeReader(io.MultiReader(bytes.NewReader(hb[:]), c.nc), &rec))
	if err != nil {
		var he *wire.HandshakeError
		if errors.As(err, &he) {
			return c.refuse(he.Code, he.Reason)
		}
		c.log.Info("handshake: reading HELLO", zap.Error(err))
		return false
	}
	version, ok := wire.NegotiateVersion(hello.Version)
	if !ok {
		return c.refuse(wire.RefuseVersion, fmt.Sprintf("no common protocol version: this exporter speaks version %d", wire.Version))
	}
	if c.isStopping() {
		return c.refuse(wire.RefuseBusy, "the exporter is shutting down; retry later")
	}
	// §2.6: the access list, then the export name, then the permission.
	// The list was checked at accept; again here because SetAccess may
	// have changed it, and a resume must meet the current one. Before the
	// export name, so that a refused peer cannot probe names.
	access, rule := s.acl.Load().lookup(c.peer)
	if access == Deny {
		return c.refuse(wire.RefuseAccessDenied, fmt.Sprintf("%s is not on the access list", c.peer.desc))
	}
	exp := s.lookupExport(hello.Export)
	if exp == nil {
		return c.refuse(wire.RefuseNoSuchExport, fmt.Sprintf("no export named %q here", hello.Export))
	}
	c.exp = exp
	if err := hs.Hello(rec.Bytes()); err != nil {
		return c.refuseCrypto(err)
	}
	c.readOnly = exp.cfg.ReadOnly || access == ReadOnly || hello.WantReadOnly
	c.features = hello.Features & exp.features
	c.maxInflight = int64(s.cfg.MaxInflight)
	if hello.MaxInflight != 0 {
		c.maxInflight = min(c.maxInflight, int64(hello.MaxInflight))
	}
	c.maxTransfer = exp.maxTransfer
	// The connection's ring, on this (locked) thread, before the session
	// is touched: a connection that cannot have one is refused BUSY.
	uring.LockThread()
	if err := c.setupRing(); err != nil {
		c.log.Error("cannot create the connection's io_uring ring", zap.Error(err))
		return c.refuse(wire.RefuseBusy, "the exporter cannot start an I/O ring for this connection; retry later")
	}
	keyed := hs.Suite().Keyed()
	var (
		sess    *session
		token   wire.Token
		resumed bool
	)
	if keyed {
		token, resumed = s.peekSession(c, hello)
		if !resumed {
			c.welcomeToken = token // the session attachSession will start
		}
	} else {
		sess, resumed, err = s.attachSession(c, hello)
		if err != nil {
			return c.refuse(wire.RefuseBusy, "the exporter is shutting down; retry later")
		}
		token = sess.token
	}
	w := &wire.Welcome{
		Version:       version,
		Session:       token,
		Resumed:       resumed,
		Size:          exp.file.Size(),
		LogicalBlock:  exp.file.LogicalBlockSize(),
		PhysicalBlock: exp.physicalBlock,
		MaxTransfer:   exp.maxTransfer,
		ReadOnly:      c.readOnly,
		Features:      c.features,
		MaxInflight:   uint32(c.maxInflight),
		ExporterName:  s.cfg.Name,
		Crypto:        hs.WelcomeAttr(),
		TagSize:       hs.TagSize(),
	}
	if c.features&wire.FeatDiscard != 0 {
		w.DiscardGranularity = exp.discardGranularity
	}
	rec.Reset()
	if err := wire.WriteWelcome(io.MultiWriter(c.nc, &rec), w); err != nil {
		c.log.Info("handshake: writing WELCOME", zap.Error(err))
		return false
	}
	if err := hs.Welcome(rec.Bytes()); err != nil {
		c.log.Error("handshake: crypto", zap.Error(err))
		return false
	}
	cs, err := hs.Finish(c.nc)
	if err != nil {
		s.cfg.counters.refused.Add(1)
		c.log.Warn("handshake failed", zap.Stringer("suite", hs.Suite()), zap.Error(err))
		return false
	}
	c.setSession(cs)
	if keyed {
		// The client has proved it holds the key: now act on its SESSION.
		var again bool
		sess, again, err = s.attachSession(c, hello)
		if err != nil {
			return false
		}
		if sess.token != token || again != resumed {
			// The session was forgotten (or appeared) during the
			// handshake: the WELCOME is no longer true. Close; the
			// client reconnects.
			c.log.Info("the session changed during the handshake: closing", zap.Stringer("session", token))
			return false
		}
	}
	_ = c.nc.SetWriteDeadline(time.Time{})
	c.dlMu.Lock()
	c.phase = phaseRunning
	c.dlMu.Unlock()
	msg := "session started"
	if resumed {
		msg = "session resumed"
	}
	c.log.Info(msg, zap.String("export", exp.cfg.Name), zap.Stringer("session", sess.token),
		zap.String("client", hello.ClientName), zap.String("rule", rule), zap.Bool("read_only", c.readOnly),
		zap.Stringer("features", c.features), zap.Int64("max_inflight", c.maxInflight))
	return true
}

// peekSession returns what attachSession would do for h: the token of the
// session to resume and true, or a fresh token and false. It changes
// nothing.
func (s *Server) peekSession(c *conn, h *wire.Hello) (wire.Token, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.HasSession && c.features&wire.FeatResume != 0 {
		if sess := s.sessions[h.Session]; sess != nil && sess.exp == c.exp {
			return h.Session, true
		}
	}
	return wire.NewToken(), false
}

// newSessionToken is the token of a session started for c: the one its
// WELCOME announced (keyed handshake), or a fresh one.
func (c *conn) newSessionToken() wire.Token {
	if !c.welcomeToken.IsZero() {
		return c.welcomeToken
	}
	return wire.NewToken()
}

// refuse sends a REFUSE and logs it; it always returns false.
func (c *conn) refuse(code wire.RefuseCode, reason string) bool {
	c.log.Info("handshake refused", zap.Stringer("code", code), zap.String("reason", reason))
	if err := wire.WriteRefuse(c.nc, &wire.Refuse{Code: code, Reason: reason}); err != nil {
		c.log.Debug("writing REFUSE", zap.Error(err))
	}
	return false
}
