package export

// Test hooks, visible to the export_test package only.

// NumConns is the number of connections (handshaking or running).
func (s *Server) NumConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// NumSessions is the number of sessions held (attached or lingering).
func (s *Server) NumSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Hold parks every op submitted from now on in its export's executor
// (recorded executing, not yet given to the Worker), or with on false
// submits the parked ones.
func (s *Server) Hold(on bool) {
	for _, e := range s.list {
		e.ex.setHold(on)
	}
}

// Executing is the number of ops submitted to the exports' executors and
// not completed.
func (s *Server) Executing() int64 {
	var n int64
	for _, e := range s.list {
		if e.ex != nil {
			n += e.ex.ops.Load()
		}
	}
	return n
}

// Detached is the number of sessions without a connection.
func (s *Server) Detached() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, sess := range s.sessions {
		sess.mu.Lock()
		if sess.current == nil {
			n++
		}
		sess.mu.Unlock()
	}
	return n
}

// WorkerPerConn makes the server give every connection its own Worker.
func WorkerPerConn(cfg *Config) { cfg.workerPerConn = true }

// MaxSessions sets how many sessions the server holds before it forgets
// detached ones.
func MaxSessions(cfg *Config, n int) { cfg.maxSessions = n }
