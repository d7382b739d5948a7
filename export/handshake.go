package export

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/internal/uring"
	"github.com/dst-dev/dst/internal/wire"
)

// handshake reads the HELLO, answers WELCOME or REFUSE (PROTOCOL.md §2),
// and on success attaches the connection to a new or resumed session. The
// connection's deadline (HandshakeTimeout from accept) bounds it. It
// reads the HELLO without buffering, so that bytes a client sends after it
// are left in the socket for the loop.
func (c *conn) handshake() bool {
	s := c.srv
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
	hello, err := wire.ReadHello(io.MultiReader(bytes.NewReader(hb[:]), c.nc))
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
	exp := s.exports[hello.Export]
	if exp == nil {
		return c.refuse(wire.RefuseNoSuchExport, fmt.Sprintf("no export named %q here", hello.Export))
	}
	c.exp = exp
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
	sess, resumed, err := s.attachSession(c, hello)
	if err != nil {
		return c.refuse(wire.RefuseBusy, "the exporter is shutting down; retry later")
	}
	w := &wire.Welcome{
		Version:       version,
		Session:       sess.token,
		Resumed:       resumed,
		Size:          exp.file.Size(),
		LogicalBlock:  exp.file.LogicalBlockSize(),
		PhysicalBlock: exp.physicalBlock,
		MaxTransfer:   exp.maxTransfer,
		ReadOnly:      c.readOnly,
		Features:      c.features,
		MaxInflight:   uint32(c.maxInflight),
		ExporterName:  s.cfg.Name,
	}
	if c.features&wire.FeatDiscard != 0 {
		w.DiscardGranularity = exp.discardGranularity
	}
	if err := wire.WriteWelcome(c.nc, w); err != nil {
		c.log.Info("handshake: writing WELCOME", zap.Error(err))
		return false
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

// refuse sends a REFUSE and logs it; it always returns false.
func (c *conn) refuse(code wire.RefuseCode, reason string) bool {
	c.log.Info("handshake refused", zap.Stringer("code", code), zap.String("reason", reason))
	if err := wire.WriteRefuse(c.nc, &wire.Refuse{Code: code, Reason: reason}); err != nil {
		c.log.Debug("writing REFUSE", zap.Error(err))
	}
	return false
}
