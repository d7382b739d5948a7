// Package transport moves the bytes of the DST protocol between a client
// daemon (dst attach URL) and an exporter (dst export --listen URL). It knows
// nothing of the protocol's frames: it dials and listens on byte streams
// named by URLs, and returns plain net.Conn and net.Listener values.
//
// # URLs
//
// A URL names a transport endpoint and, for a client, the export to attach:
//
//	dst://host:port/export          TCP; host is a DNS name or an IPv4 address
//	dst://[v6addr]:port/export      TCP over IPv6
//	dst://host/export               TCP on DefaultPort (10811)
//	dst+unix:///path/to.sock?export=name
//	dst+mem://name/export           in-process; dst+mem://name?export=name too
//
// Listen URLs have no export: dst://0.0.0.0:10811, dst://[::]:10811,
// dst+unix:///run/dst.sock, dst+mem://name. Port 0 is allowed there (the
// kernel picks a port; Listen returns the URL with it) but not for Dial.
// The query may also carry options overriding Options: nodelay=false,
// keepalive=5s|off, sndbuf=BYTES, rcvbuf=BYTES, timeout=5s (dial timeout).
//
// ParseURL checks a URL and returns it in canonical form (URL.String parses
// back to the same URL); a bad URL gives a *URLError whose message says what
// is wrong and lists the accepted forms.
//
// # Transports
//
// A Transport has a name ("tcp", "unix", "mem"), the URL schemes it serves,
// and Dial and Listen methods; the contract of each is in its doc comment.
// Dial, DialURL and Listen pick the transport from the URL's scheme.
//
//   - tcp: *net.TCPConn with TCP_NODELAY, keep-alive (Options.KeepAlive,
//     KeepAliveProbes probes) and optional socket buffer sizes. The conns
//     are not wrapped, so net.Buffers.WriteTo sends a header and its payload
//     with a single writev. PeerIP gives the peer's address for the
//     exporter's access list.
//   - unix: stream Unix domain sockets. Access control is by the socket
//     file's permissions (mode 0660): PeerIP reports false, PeerCred gives
//     the peer's uid/gid/pid. Listen replaces a stale socket file but not a
//     live one; closing the listener removes the file.
//   - mem: in-process conns through a global registry of named listeners,
//     buffered like sockets (a bounded ring buffer each way, blocking the
//     writer when full) with deadlines and TCP-like close semantics. Far
//     faster than net.Pipe for pipelined traffic, for tests and for wiring a
//     client and an exporter in one process.
//
// Every blocking call has a way out: Dial honours its context and
// Options.DialTimeout, Accept returns on Listener.Close or the listener's
// deadline (AcceptContext ties it to a context), conn calls return on Close
// or their deadline. Errors carry their context ("dial dst://...: ...") and
// wrap their causes for errors.Is and errors.As.
//
// # Adding a transport
//
// A transport is one file in this package that defines a type implementing
// Transport (and, if its addresses need checking or its URLs a form other
// than scheme://address/export, AddressParser), and registers it:
//
//	func init() { Register(quicTransport{}) }
//
// Nothing else changes: ParseURL, Dial, Listen and the URL error messages
// pick it up from the registry. Its address is the URL's authority
// (scheme://address/export) or, when that is empty, its path
// (scheme:///path?export=name); URL.String writes addresses that start with
// '/' in the second form.
//
// # Fault injection
//
// The subpackage fault wraps conns, listeners and dials to inject delays,
// stalls, cuts, bit flips, dropped frames and partitions, deterministically
// from a seed, and provides a fault-injecting Proxy. A byte stream cannot
// lose bytes in its middle and carry on, so the faults keep to what a real
// stream can show: a cut is seen by the peer as EOF after an exact number of
// bytes; a partition is a stall in both directions, seen as a timeout past
// the conn's deadline, and (if it loses data) a cut conn once it heals;
// dropping a whole frame models a buggy peer, to check that the protocol
// detects it. See the fault package documentation for the exact rules.
package transport
