package export

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
)

// Reloading (dst export's SIGHUP)
//
// The access list and the set of exports can change while the server
// runs; nothing else can (listeners, limits, crypto and the exporter name
// need a restart).
//
//   - SetAccess replaces the access list. New connections and every
//     handshake from now on (resumes included) are checked against it.
//     An established connection whose peer the new list denies, or
//     grants only ro while its session may write, is closed: its
//     in-flight requests finish (their results stay in the session
//     record), and the client's reconnect meets the new list — refused at
//     accept, or resumed read-only (writes then get EPERM). Connections
//     whose access is unchanged or widened keep going untouched.
//   - AddExport opens an export and serves it to handshakes from then on.
//   - RemoveExport stops serving one: new handshakes for it are refused
//     (no such export), its sessions are forgotten and their connections
//     closed (in-flight requests finish first), and once the last of them
//     has ended the file is fdatasynced and closed. Other exports'
//     sessions are not touched.
//
// Races with handshakes in progress are closed by attachSession, which
// checks, under Server.mu, that the export was not removed and that the
// peer's access (under the current list) still covers what the handshake
// granted; SetAccess and RemoveExport change things under the same lock.

// errExportRemoved refuses a handshake for an export removed while it ran.
var errExportRemoved = errors.New("export: the export was removed")

// errAccessChanged refuses a handshake whose access the list reduced
// while it ran.
var errAccessChanged = errors.New("export: the access list changed during the handshake")

// SetAccess replaces the access list and closes the established
// connections whose access it reduced (denied, or read-only for a
// session that may write). It returns an error, and changes nothing, if
// the list is invalid (ErrNoACL for an empty one).
func (s *Server) SetAccess(a ACL) error {
	t, err := a.compile()
	if err != nil {
		return err
	}
	var revoked []*conn
	s.mu.Lock()
	s.acl.Store(t)
	for c := range s.conns {
		if c.sess == nil {
			continue // in its handshake: attachSession checks the new list
		}
		access, _ := t.lookup(c.peer)
		if access == Deny || access == ReadOnly && !c.readOnly {
			revoked = append(revoked, c)
		}
	}
	nbdRevoked := s.revokeNBDLocked(t)
	s.mu.Unlock()
	for _, c := range revoked {
		c.log.Info("closing connection: the new access list reduces this peer's access")
		c.abort("access reduced by a new access list")
	}
	for _, c := range nbdRevoked {
		c.log.Info("closing NBD connection: the new access list reduces this peer's access")
		c.abort()
	}
	s.log.Info("access list replaced", zap.Stringers("rules", a.Rules), zap.Stringer("allow_all", a.AllowAll),
		zap.Int("connections_closed", len(revoked)+len(nbdRevoked)))
	return nil
}

// stillAllowedLocked is attachSession's check that nothing a reload did
// while c's handshake ran makes it stale. s.mu is held.
func (s *Server) stillAllowedLocked(c *conn) error {
	if c.exp.removed {
		return errExportRemoved
	}
	access, _ := s.acl.Load().lookup(c.peer)
	if access == Deny || access == ReadOnly && !c.readOnly {
		return errAccessChanged
	}
	return nil
}

// lookupExport returns the export served under name, or nil.
func (s *Server) lookupExport(name string) *export {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exports[name]
}

// Exports returns the configuration of the exports served now, in the
// order they were added.
func (s *Server) Exports() []ExportConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ExportConfig, len(s.list))
	for i, e := range s.list {
		out[i] = e.cfg
	}
	return out
}

// AddExport opens ec (as New does) and serves it from now on. The name
// must not be served already (remove it first to change an export).
func (s *Server) AddExport(ec ExportConfig) error {
	if err := validExport(ec); err != nil {
		return err
	}
	if s.lookupExport(ec.Name) != nil {
		return fmt.Errorf("export %q is served already", ec.Name)
	}
	e, err := s.openExport(ec)
	if err != nil {
		return err
	}
	s.mu.Lock()
	switch {
	case s.stopping:
		err = ErrServerClosed
	case s.exports[ec.Name] != nil:
		err = fmt.Errorf("export %q is served already", ec.Name)
	default:
		s.exports[ec.Name] = e
		s.list = append(s.list, e)
	}
	s.mu.Unlock()
	if err != nil {
		e.close() //nolint:errcheck // never served: nothing was written
		return err
	}
	s.log.Info("export added", zap.String("export", ec.Name), zap.String("path", ec.Path), zap.Bool("ro", ec.ReadOnly))
	return nil
}

// RemoveExport stops serving the export name: new handshakes for it are
// refused, its sessions are forgotten and their connections closed. It
// waits until every one of them has ended and the file is synced and
// closed, or until ctx ends (the file is then closed when the last
// connection ends, and RemoveExport returns ctx's error).
func (s *Server) RemoveExport(ctx context.Context, name string) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return ErrServerClosed
	}
	e := s.exports[name]
	if e == nil {
		s.mu.Unlock()
		return fmt.Errorf("no export named %q", name)
	}
	delete(s.exports, name)
	for i, x := range s.list {
		if x == e {
			s.list = append(s.list[:i:i], s.list[i+1:]...)
			break
		}
	}
	e.removed = true
	var closing []*conn
	for tok, sess := range s.sessions {
		if sess.exp != e {
			continue
		}
		sess.mu.Lock()
		sess.gone = true // dispatch and checkDrained see it: nothing more runs
		if sess.current != nil {
			closing = append(closing, sess.current)
		}
		sess.mu.Unlock()
		delete(s.sessions, tok)
	}
	last := e.conns == 0 && !e.closing
	if last {
		e.closing = true
	}
	s.mu.Unlock()
	for _, c := range closing {
		c.abort("the export was removed")
	}
	s.log.Info("removing export", zap.String("export", name), zap.Int("connections", len(closing)))
	if last {
		return s.closeRemoved(e)
	}
	select {
	case <-e.closed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("export %q: its connections have not ended yet (it is closed when they have): %w", name, context.Cause(ctx))
	}
}

// pinExport counts a connection that does not attach a DST session (an
// NBD client) as a user of e, so that RemoveExport does not close the file
// under it. It fails if e was removed. Such connections are not closed by
// RemoveExport: the file is closed when the last of them ends.
func (s *Server) pinExport(e *export) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.removed {
		return false
	}
	e.conns++
	return true
}

// unpinExport ends a user of e (pinExport, or a DST connection attached to
// a session of e); the last user of a removed export closes it.
func (s *Server) unpinExport(e *export) {
	s.mu.Lock()
	e.conns--
	last := e.removed && e.conns == 0 && !e.closing
	if last {
		e.closing = true
	}
	s.mu.Unlock()
	if last {
		s.closeRemoved(e)
	}
}

// closeRemoved syncs and closes a removed export once nothing uses it.
func (s *Server) closeRemoved(e *export) error {
	err := e.close()
	if err != nil {
		s.log.Warn("removed export closed with an error", zap.String("export", e.cfg.Name), zap.Error(err))
	} else {
		s.log.Info("export removed", zap.String("export", e.cfg.Name))
	}
	return err
}

// validExport checks what New's configuration check does for one export.
func validExport(ec ExportConfig) error {
	probe := Config{Exports: []ExportConfig{ec}, Access: ACL{AllowAll: ReadOnly}}
	_, _, err := probe.withDefaults()
	return err
}
