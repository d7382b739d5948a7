package transport

import (
	"net"

	"golang.org/x/sys/unix"
)

func peerCred(c *net.UnixConn) (uid, gid, pid int, ok bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, 0, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return 0, 0, 0, false
	}
	return int(cred.Uid), int(cred.Gid), int(cred.Pid), true
}
