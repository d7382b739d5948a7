package export

import (
	"fmt"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/internal/wire"
)

// Frame protection on the exporter (PROTOCOL.md §8)
//
// The handshake (handshake.go) yields the connection's crypto.Session;
// the loop then opens every request frame in the order its header is read
// and seals every reply in the order it is queued for the WRITEV, so the
// counters of both directions follow the stream:
//
//   - a frame without payload: header and trailer are in the staging
//     buffer; the trailer is checked before the request is acted on;
//   - a WRITE: payload and trailer are received together into the op's
//     buffer (allocated TagSize larger), straight from the socket for
//     large ones, and opened in place before dispatch;
//   - a READ reply: the trailer goes right after the payload in the op's
//     buffer (also TagSize larger), sealed in place (the exporter does not
//     keep READ data), so the reply still leaves from the I/O buffer with
//     no copy; other replies carry their trailer right after the header.
//
// The work is done inline on the loop's thread, with one option: READ
// replies whose payload is above crypto.DefaultInline can be sealed on
// Config.CryptoPool's workers, the batch in parallel, while the loop waits
// before its WRITEV (sealReply, sealWait). Small frames always stay
// inline: a request frame must be opened before it is dispatched and a
// reply sealed before its WRITEV, the loop's thread has nothing else to do
// meanwhile, and a hand-over to a worker costs a wake-up each way (0.5-2
// µs on the 2-CPU reference machine, crypto's BenchmarkPoolLatency), as
// much as sealing a 4 KiB frame (0.25-2.7 µs, crypto's BenchmarkSeal).
// Request frames are always opened inline (one at a time, as they are
// parsed). txn's BenchmarkClientCrypto measures both choices.
//
// A frame that does not verify is lost: not executed, not answered, not
// recorded, and counted (Server.CryptoStats). After a checksum mismatch
// the connection goes on (the next frame has its own checksum); after an
// AEAD failure it is closed: that is tampering, or corruption below
// TCP's checksum, and the client resends on a new connection with fresh
// keys.

// counters are the server's crypto counters (Config.counters).
type counters struct {
	corrupt atomic.Uint64 // request frames whose checksum did not match
	auth    atomic.Uint64 // request frames that failed AEAD authentication
	refused atomic.Uint64 // handshakes refused or failed for crypto reasons
}

// CryptoStats are the server's crypto counters.
type CryptoStats struct {
	Corrupt uint64 // request frames dropped on a checksum mismatch
	Auth    uint64 // request frames that failed authentication (connection closed)
	Refused uint64 // handshakes refused or failed for crypto reasons
}

// CryptoStats returns the server's crypto counters.
func (s *Server) CryptoStats() CryptoStats {
	c := s.cfg.counters
	return CryptoStats{Corrupt: c.corrupt.Load(), Auth: c.auth.Load(), Refused: c.refused.Load()}
}

// setSession installs the connection's frame protection.
func (c *conn) setSession(cs *crypto.Session) {
	c.cs, c.tag = cs, 0
	if cs != nil {
		c.tag = cs.Send.TagSize()
		c.poolInline = crypto.DefaultInline(cs.Suite)
	}
}

// takeBare consumes a frame without payload — the header hb and, with
// crypto, its trailer at the start of b — and reports whether it
// verified. When it did not, the frame is lost (see lost).
func (c *conn) takeBare(hb, b []byte) bool {
	if c.tag == 0 {
		c.consumeHeader()
		return true
	}
	var err error
	if c.rframe, err = c.cs.Recv.Next(0); err == nil {
		err = c.rframe.Open(hb, nil, b[:c.tag])
	}
	c.consumeHeader()
	c.rcv.Consume(c.tag)
	if err != nil {
		c.lost(err)
		return false
	}
	return true
}

// lost counts a request frame that did not verify; an AEAD failure (or a
// used-up counter) also stops reading and closes the connection.
func (c *conn) lost(err error) {
	n := c.srv.cfg.counters
	if err == crypto.ErrCorrupt {
		n.corrupt.Add(1)
		c.log.Debug("request frame dropped", zap.Uint64("frame", c.rframe.Seq()), zap.Error(err))
		return
	}
	if err == crypto.ErrAuth {
		n.auth.Add(1)
	}
	c.endRead(endFraming, fmt.Errorf("request frame %d: %w", c.rframe.Seq(), err))
}

// openWrite verifies and decrypts a WRITE whose payload and trailer are
// in its buffer (header in c.pendHdr, frame in c.pframe), then dispatches
// it; a frame that does not verify is dropped.
func (c *conn) openWrite(o *op) {
	if c.tag > 0 {
		n := int(o.length)
		if err := c.pframe.OpenTo(c.pendHdr[:], o.buf.b[:n+c.tag], o.buf.b[:n]); err != nil {
			c.inflight.Add(-1)
			o.release(c)
			c.rframe = c.pframe
			c.lost(err)
			return
		}
	}
	c.dispatchOp(o)
}

// sealReply protects reply i of the batch being flushed, in place: hdr is
// its encoded header, payload its payload (a READ: the op's buffer, with
// the trailer right after it) or nil, trl its trailer. The frame number is
// taken here, in WRITEV order; a payload above the pool's inline
// threshold is sealed by a worker (Config.CryptoPool), and sealWait waits
// for those before the WRITEV.
func (c *conn) sealReply(hdr, payload, trl []byte, i int) error {
	pool := c.srv.cfg.CryptoPool
	if pool == nil || len(payload) <= c.poolInline {
		return c.cs.Send.Seal(hdr, payload, trl)
	}
	if c.sealQ == nil {
		c.sealQ = pool.NewQueue(maxBatch, c.poolInline)
		c.sealJobs = make([]crypto.Job, maxBatch)
	}
	j := &c.sealJobs[i]
	var err error
	if j.Frame, err = c.cs.Send.Next(len(payload)); err != nil {
		return err
	}
	j.Hdr, j.Payload, j.Trailer, j.Body, j.Open = hdr, payload, trl, nil, false
	c.sealQ.Submit(j)
	c.sealing++
	return nil
}

// sealWait waits for the replies sealed by the pool (the loop's thread
// sleeps meanwhile: it has nothing to send before they are done).
func (c *conn) sealWait() {
	for ; c.sealing > 0; c.sealing-- {
		j, _ := c.sealQ.Next()
		j.Hdr, j.Payload, j.Trailer = nil, nil, nil
	}
}

// dataBufSize is the buffer an op of length n needs: its payload and,
// with crypto, the trailer received with it (WRITE) or sealed after it
// (READ).
func (c *conn) dataBufSize(n uint32) int { return int(n) + c.tag }

// refuseCrypto refuses a handshake for a crypto reason.
func (c *conn) refuseCrypto(err error) bool {
	c.srv.cfg.counters.refused.Add(1)
	if he, ok := err.(*wire.HandshakeError); ok {
		return c.refuse(he.Code, he.Reason)
	}
	return c.refuse(wire.RefuseUnsupported, err.Error())
}
