package export

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The bridge: a conn without a socket descriptor (the in-process mem
// transport, a net.Conn wrapped by a test or a proxy) gets a Unix
// socketpair; the loop serves one end exactly like a socket, and two
// goroutines copy between the other end and the net.Conn. The copies cost
// a hand-over per chunk, which only matters for in-process use; in return
// there is one connection loop for every transport.
//
//	in:  net.Conn → pair (EOF or an error: the pair's write side is shut,
//	     the loop reads EOF)
//	out: pair → net.Conn (EOF once the loop has closed its end and
//	     everything it sent has been copied)
//
// finishBridge, after the loop: waits for out to deliver what the loop sent
// (GOODBYE...) — bounded by IdleTimeout and by abort —, then closes the
// net.Conn, which ends in, and waits for it.
type bridge struct {
	pc      *net.UnixConn
	inDone  chan struct{}
	outDone chan struct{}
}

// startBridge starts the copies and returns the loop's end.
func (c *conn) startBridge() (int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("bridge: socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[1]), "bridge")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[0])
		return -1, fmt.Errorf("bridge: %w", err)
	}
	_ = c.nc.SetDeadline(time.Time{}) // the handshake's
	b := &bridge{pc: fc.(*net.UnixConn), inDone: make(chan struct{}), outDone: make(chan struct{})}
	c.br = b
	go func() {
		defer close(b.inDone)
		_, _ = io.Copy(b.pc, c.nc)
		_ = b.pc.CloseWrite()
	}()
	go func() {
		defer close(b.outDone)
		_, _ = io.Copy(c.nc, b.pc)
	}()
	return fds[0], nil
}

// finishBridge runs once the loop has closed its end.
func (c *conn) finishBridge() {
	b := c.br
	if t := c.srv.cfg.IdleTimeout; t > 0 {
		_ = c.nc.SetWriteDeadline(time.Now().Add(t))
	}
	select {
	case <-b.outDone:
	case <-c.kill:
	}
	c.nc.Close()
	b.pc.Close()
	<-b.outDone
	<-b.inDone
}
