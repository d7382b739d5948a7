// Package export is DST's exporter: it serves local files and block
// devices to DST clients over the wire protocol of docs/PROTOCOL.md.
//
//	srv, err := export.New(export.Config{
//		Exports: []export.ExportConfig{{Name: "disk", Path: "/dev/sdb"}},
//		Access:  export.ACL{Rules: []export.Rule{rule}}, // export.ParseRule("10.0.0.0/8=rw")
//		Log:     logger,
//	})
//	// one goroutine per listener (transport.Listen):
//	go srv.Serve(ctx, l)
//	...
//	srv.Shutdown(ctx) // GOODBYE to every client, sync, close
//
// New opens every export (backend.Open, O_DIRECT unless Buffered) and
// checks the whole configuration before anything listens. Serve accepts
// on one listener; several may run at once. Shutdown and Close stop
// everything and wait for every goroutine the server started.
//
// # The pipeline
//
// Each connection has two goroutines of its own and shares the export's
// I/O Worker:
//
//	serial   reader: bufio → 40-byte header → wire.ParseRequest → a
//	         page-aligned buffer from the pool (waiting while the
//	         connection holds MaxBufferBytes: backpressure) → a WRITE's
//	         payload read straight into it → dispatch, under the session
//	         lock: fence check, record rules, request checks, Submit.
//	         PINGs are answered here, ahead of any queued I/O.
//	parallel backend.Worker (one io_uring per export, its own goroutine
//	         locked to a thread): executes; Done records the status and
//	         queues the reply on the session's current connection.
//	serial   writer: takes every queued reply at once and sends headers
//	         and READ payloads (straight from the I/O buffers) with one
//	         writev; gives the buffers back.
//
// Handoffs: reader → Worker through an executor that never blocks (it
// hands the Worker at most its queue length and parks the rest; see
// executor.go); Worker → writer through a locked slice and a wake channel
// of capacity 1. The reader never waits for the disk or the writer; it
// only waits for buffers (MaxBufferBytes) and, for pings, for the writer to
// drain 64 pending ping replies. Queues are bounded by admission:
// MaxInflight transactions per connection (exceeding it is a protocol
// violation that closes the connection) and MaxBufferBytes of buffers.
// In steady state nothing is allocated per request: ops and buffers are
// pooled (sync.Pool per power-of-two size class), the record is an array.
//
// One Worker per export, not per connection. BenchmarkExport measures
// both on this 2-CPU host: with one connection they are within noise of
// each other (4 KiB random reads at depth 32 on tmpfs: about 200k IOPS
// either way); with four connections at depth 32 one Worker per export
// does 237k reads/246k writes per second against 159k/150k with a Worker
// per connection (on the virtual disk 96k against 69k writes): one ring
// thread batches every connection's requests into one io_uring_enter,
// where a ring per connection adds a thread per connection contending
// for the same two CPUs.
//
// # Sessions and the record (PROTOCOL.md §5)
//
// Every connection that completes a handshake belongs to a session,
// identified by a 128-bit token from crypto/rand. A HELLO carrying a token
// of a session of the same export, with RESUME in CLIENT_FEATURES,
// resumes it (after the access list is checked again); a token of another
// export, or an unknown one, starts a new session (logged). Resuming
// fences the previous connection (§5.4): it is closed, and its reader,
// which may still hold requests it has read, dispatches nothing more,
// because dispatch happens under the session lock and first checks that
// its connection is still the session's current one.
//
// The record is a ring of 65536 entries {id, executing|done, status, op}
// indexed by id mod 65536, allocated by 1024-entry chunks as ids reach
// them. Dispatch applies §5.3:
//
//   - rule 1: an id that is executing is not executed again; the first
//     copy's completion answers once, on the current connection;
//   - rule 2: a done WRITE, FLUSH, DISCARD or WRITE_ZEROES is answered
//     with the recorded status; a done READ is executed again;
//   - rule 3: the highest floor of the session's transactions is kept;
//   - rule 4: an id below it, or whose entry holds a newer id (evicted),
//     is answered ESTALE and not executed;
//   - rule 5: replies go to the session's current connection; while it
//     has none, results stay in the record for the resend.
//
// A detached session is kept for SessionLinger (and while it has I/O
// executing), then forgotten; at most 4096 sessions are held, beyond
// which a new session forgets the detached one that waited longest. DISCONNECT (§5.7): the reader stops, every
// transaction of the session finishes and is answered, DISCONNECT is
// echoed, the connection is closed and the session forgotten.
//
// # Readings of PROTOCOL.md
//
//   - A request that fails the checks (range, alignment, EROFS, EPERM,
//     EOPNOTSUPP) is recorded done with its status, so a resend gets the
//     same answer even if the session's permissions changed meanwhile.
//   - A write past the end is ENOSPC (§5.2), and so are a discard and a
//     write-zeroes past the end (backend.Check); a read past the end, a
//     misaligned range and one whose end overflows are EINVAL.
//   - Transaction ids are ≥ 1 (§3): a transaction with id 0 is answered
//     EINVAL and not recorded.
//   - An id reused for another op is refused with EINVAL, without
//     touching the record. A new id whose entry is still executing (more
//     than 65536 transactions outstanding in the session) is a protocol
//     violation: the connection is closed.
//   - MAX_INFLIGHT counts transactions: a resend of an executing id on the
//     same connection does not count twice; one on a resumed connection
//     moves the count there. The count is given back when the reply is
//     handed to writev, so a client never sees a reply before its slot is
//     free. PINGs and DISCONNECT do not count and carry no floor.
//   - A HELLO with version 0 is refused VERSION (wire.NegotiateVersion),
//     not MALFORMED.
//   - ACCESS_DENIED: peers not on the access list are closed at accept
//     without a handshake (§2.6). The list is checked again at every
//     handshake, and SetAccess can change it, so a connection accepted
//     before a change, or a resume from a peer that lost its right, gets
//     REFUSE ACCESS_DENIED.
//   - Features in effect are CLIENT_FEATURES ∩ what the export can do
//     (backend Caps; RESUME always). A read-only session of a writable
//     export keeps them (writes are refused with EPERM); a read-only
//     export offers none but RESUME.
//   - Sessions of clients without RESUME are forgotten when their
//     connection ends.
//
// # Access control
//
// See ACL: IP peers by the most specific CIDR rule or the explicit
// allow-all; Unix-socket (and in-process mem) peers by the socket file's
// permissions, read-write unless a "unix=ro" rule says otherwise, their
// credentials logged. A session is read-only if the export is, the peer's
// access is ro, or the client asked for it.
//
// # Shutdown order
//
//  1. Stop accepting: every Serve's listener is closed.
//  2. Every connection stops reading (a frame half-read is dropped,
//     unanswered: it was never dispatched, the client resends it);
//     connections still in their handshake get a second to send HELLO
//     and are refused BUSY.
//  3. Each connection waits until its session has nothing executing (the
//     replies are queued), queues GOODBYE, lets the writer send it all,
//     and closes. If Shutdown's context ends first, the remaining
//     connections are closed at once.
//  4. The Workers are closed once every op has completed (detached
//     sessions' I/O included): no buffer is in the kernel any more.
//  5. Every writable export is fdatasynced, then closed.
//
// # Goroutines
//
// Every goroutine has an owner that waits for it: the server's WaitGroup
// owns the Serve loops, the connection goroutines and the janitor
// (linger); a connection owns its writer; a Serve call owns the goroutine
// that closes its listener; the executor owns its ops. Every blocking call
// has a way out: reads and writes have deadlines (HandshakeTimeout,
// IdleTimeout) or end when the connection is aborted, waits select on the
// connection's kill channel, and Shutdown's context bounds the rest.
package export
