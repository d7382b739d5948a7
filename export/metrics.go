package export

import (
	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/internal/metrics"
	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/internal/wire"
)

// ExportMetrics are the counters of one export, for Server.Metrics.
type ExportMetrics struct {
	Name     string
	Path     string
	ReadOnly bool
	// IO counts the requests executed on the export's storage, per op:
	// their latency runs from the moment a request is recorded executing
	// (after the session's checks, before the storage I/O is queued) to
	// its completion, reply not included. NBD requests are not counted
	// here but in NBD.
	IO metrics.IOSnapshot
	// NBD counts the NBD requests of the export's NBD connections by op
	// (READ, WRITE, FLUSH, TRIM as discard, WRITE_ZEROES; CACHE and DISC
	// are not counted), refused ones (EINVAL, EPERM...) among the errors;
	// their latency runs from the request parsed to its reply queued.
	NBD metrics.IOSnapshot
	// NBDConns are the NBD connections in transmission on the export.
	NBDConns int
	// Duplicates are requests answered without executing them again: a
	// resend of a transaction still executing, or answered from the
	// session record (PROTOCOL.md §5.3 rules 1 and 2).
	Duplicates uint64
	Sessions   int // sessions of this export held now (attached or lingering)
	Conns      int // DST connections attached to its sessions, NBD connections included
}

// ServerMetrics is a snapshot of a Server's counters.
type ServerMetrics struct {
	Exports []ExportMetrics // in the order they were added
	Conns   int             // DST connections open now, handshaking ones included
	// NBDConns are the NBD connections open now, negotiating ones included.
	NBDConns int
	Crypto   CryptoStats
	// Pool is the crypto worker pool's, if Config.CryptoPool is set.
	Pool *crypto.PoolStats
}

// Metrics returns a snapshot of the server's counters (any goroutine; it
// takes the server's lock briefly, and every session's count from the
// session table, at most 4096 entries).
func (s *Server) Metrics() ServerMetrics {
	var m ServerMetrics
	m.Crypto = s.CryptoStats()
	if p := s.cfg.CryptoPool; p != nil {
		ps := p.Stats()
		m.Pool = &ps
	}
	s.mu.Lock()
	m.Conns = len(s.conns)
	m.NBDConns = int(s.nbdOpen.Load())
	idx := make(map[*export]int, len(s.list))
	m.Exports = make([]ExportMetrics, len(s.list))
	for i, e := range s.list {
		idx[e] = i
		m.Exports[i] = ExportMetrics{Name: e.cfg.Name, Path: e.cfg.Path, ReadOnly: e.cfg.ReadOnly, Conns: e.conns}
	}
	for _, sess := range s.sessions {
		if i, ok := idx[sess.exp]; ok {
			m.Exports[i].Sessions++
		}
	}
	list := s.list
	s.mu.Unlock()
	for i, e := range list {
		m.Exports[i].IO = e.io.Snapshot()
		m.Exports[i].Duplicates = e.dups.Load()
		m.Exports[i].NBD = e.nbdIO.Snapshot()
		m.Exports[i].NBDConns = int(e.nbdConns.Load())
	}
	return m
}

// nbdMetricsOp maps the NBD commands that count to metrics' ops.
func nbdMetricsOp(c nbd.Cmd) metrics.Op {
	switch c {
	case nbd.CmdRead:
		return metrics.Read
	case nbd.CmdWrite:
		return metrics.Write
	case nbd.CmdFlush:
		return metrics.Flush
	case nbd.CmdTrim:
		return metrics.Discard
	case nbd.CmdWriteZeroes:
		return metrics.WriteZeroes
	}
	return metrics.NumOps
}

// metricsOp maps the wire ops that execute to metrics' ops.
func metricsOp(w wire.Op) metrics.Op {
	switch w {
	case wire.OpRead:
		return metrics.Read
	case wire.OpWrite:
		return metrics.Write
	case wire.OpFlush:
		return metrics.Flush
	case wire.OpDiscard:
		return metrics.Discard
	case wire.OpWriteZeroes:
		return metrics.WriteZeroes
	}
	return metrics.NumOps
}
