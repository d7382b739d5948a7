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
// Each connection is one goroutine, locked to its OS thread, that owns one
// io_uring ring (SingleIssuer, DeferTaskrun) and does everything for the
// connection (conn.go, loop.go):
//
//	handshake  blocking reads and writes on the net.Conn, under
//	           HandshakeTimeout; the ring is created here (a connection
//	           that cannot have one is refused BUSY). Then the socket is
//	           taken out of Go's poller (ringio.DetachFd).
//	loop       Wait: one io_uring_enter submits what the last batch
//	           prepared and sleeps until a completion. Then, by CQE kind:
//	   RECV    bytes in a 256 KiB staging buffer (ringio.Receiver); a
//	           WRITE payload over 64 KiB that is not all there yet is
//	           received straight into its buffer (MSG_WAITALL);
//	   disk    backend Result → finish: record the status and queue the
//	           reply on the session's current connection — this loop
//	           itself, or (after a resume) another connection's loop
//	           through its cross-thread queue;
//	   SEND    the WRITEV of the previous replies completed: their READ
//	           buffers go back to the pool;
//	   wake    the eventfd (kept armed on the ring): cross-thread events.
//	step       parse every complete request: header → wire.ParseRequest →
//	           a page-aligned pooled buffer → dispatch under the session
//	           lock (fence check, record rules, request checks) → backend
//	           Prep of an SQE on this ring. PINGs are answered at once.
//	           Then one WRITEV of every queued reply (headers and READ
//	           payloads straight from the I/O buffers, ringio.Sender), and
//	           the RECV re-armed — unless the connection holds
//	           MaxBufferBytes of buffers or 64 unsent ping replies:
//	           backpressure is not reading.
//
// A request thus crosses no thread on its normal path: the thread that
// receives it executes it and sends its reply, and one io_uring_enter per
// batch serves the socket and the disk together. Other goroutines reach a
// loop only through its xqueue (queue.go: a locked slice plus the eventfd):
// replies of its session that completed on another connection's loop,
// results of the sync helpers (backend StepSync, at most four goroutines
// per connection, started on first use), and kicks (Shutdown, abort, a
// buffer given back by another thread, the tests' Hold).
//
// Variants: files on tmpfs or ramfs have no FMODE_NOWAIT, so io_uring would
// hand each read and write to an io-wq thread and back; the loop copies
// through a shared mapping of the file instead (backend.MemFile, internal/backend/memfile.go). Conns without
// a socket descriptor (the mem transport, a wrapped net.Conn) are bridged
// through a Unix socketpair by two copy goroutines (bridge.go): one loop
// for every transport.
//
// Queues are bounded by admission: MaxInflight transactions per
// connection (exceeding it is a protocol violation that closes the
// connection) and MaxBufferBytes of buffers. In steady state nothing is
// allocated per request: ops and buffers are pooled (sync.Pool per
// power-of-two size class), the record is an array, the reply lists,
// iovecs and event slices are reused (TestSteadyStateAllocs).
//
// # Why one ring per connection
//
// The previous design had a reader and a writer goroutine per connection
// and one backend.Worker (ring thread) per export: every request crossed
// four sleeping threads — Go's netpoller, the reader, the Worker (eventfd),
// the writer — and each wake-up is a futex or eventfd round trip. That is
// what a request cost, not bytes or syscalls: in the TCG test guest (2
// vCPUs, software emulation) a client and exporter round trip took
// 0.84 ms at QD1 in one process and 2.4 ms across processes, and the
// remote device reached 0.3× the kernel NBD client + nbd-server at 4k QD1.
// nbd-server wins there with one blocking thread per connection. Now a
// request wakes one thread, once; the exporter makes two io_uring_enter
// calls per request at QD1 (strace -c: before, per request, 4 futex, 3
// nanosleep, 2 epoll_pwait, 2 read, a writev, a write and 2
// io_uring_enter).
//
// Disk I/O of different connections of one export runs on different
// rings; with more connections than CPUs the threads share the CPUs, where
// one Worker per export used to batch them into one io_uring_enter. On the
// 2-CPU host with four connections at depth 32 that is now within noise
// (see the measurements); a connection per CPU or fewer is the common case
// (a DST client opens one).
//
// Measurements (BenchmarkExport, raw pipelined client over loopback TCP,
// 256 MiB file; host: 2 vCPUs, the same session, before → after, IOPS):
//
//	                        tmpfs             virtual disk (ext4)
//	randread-4k-qd1         17.3k → 37.7k      5.4k → 8.0k
//	randwrite-4k-qd1        18.6k → 33.7k      4.2k → 6.9k
//	randread-4k-qd32        189k → 312k        44k → 48k
//	randwrite-4k-qd32       197k → 281k        ~28k → ~28k (disk-bound, noisy)
//	seqread-128k-qd8        14.7k → 22.2k      6.3k → 6.1k
//	seqwrite-128k-qd8       15.0k → 10.6k*     noisy, disk-bound
//	randread-4k-qd32-4conns 191k → 245k        83k → 66k*
//	randwrite-4k-qd32-4conns 218k → 219k       ~45k → ~55k
//
// (* see the notes in the commit history: the host was shared with other
// work, and four connection threads on two CPUs contend.) In the TCG
// guest, the remote device against nbd: see GUEST below.
//
// # Sessions and the record (PROTOCOL.md §5)
//
// Every connection that completes a handshake belongs to a session,
// identified by a 128-bit token from crypto/rand. A HELLO carrying a token
// of a session of the same export, with RESUME in CLIENT_FEATURES,
// resumes it (after the access list is checked again); a token of another
// export, or an unknown one, starts a new session (logged). Resuming
// fences the previous connection (§5.4): it is closed, and its loop,
// which may still hold requests it has read, dispatches nothing more,
// because dispatch happens under the session lock and first checks that
// its connection is still the session's current one. Resuming also sets
// the recovery barrier (§5.4 step 3, session.go): the new connection
// executes nothing until every op the session was executing at the
// resume has finished; its requests that would execute wait, parked in
// the session in arrival order, and its loop goes on answering PINGs.
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
// Exports can be added and removed while serving (reload.go: AddExport,
// RemoveExport); removing one forgets its sessions, closes their
// connections and closes the file once the last of them has ended.
//
// A detached session is kept for SessionLinger (and while it has I/O
// executing), then forgotten; at most 4096 sessions are held, beyond
// which a new session forgets the detached one, with nothing executing,
// that waited longest (a session with I/O executing is never forgotten:
// its resume needs the barrier).
// DISCONNECT (§5.7): the loop stops reading, every transaction of the
// session finishes and is answered, DISCONNECT is echoed, the connection
// is closed and the session forgotten.
//
// A connection detaches from its session when it starts closing, not when
// its loop ends: its loop still waits for the I/O it started, whose
// results then stay in the record (or go to a connection that resumed the
// session meanwhile).
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
//     handed to the WRITEV, so a client never sees a reply before its slot
//     is free. PINGs and DISCONNECT do not count and carry no floor.
//   - A HELLO with version 0 is refused VERSION (wire.NegotiateVersion),
//     not MALFORMED.
//   - ACCESS_DENIED: peers not on the access list are closed at accept
//     without a handshake (§2.6). The list is checked again at every
//     handshake, and SetAccess can change it, so a connection accepted
//     before a change, or a resume from a peer that lost its right, gets
//     REFUSE ACCESS_DENIED. SetAccess also closes the established
//     connections whose access the new list reduces (reload.go).
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
//     unanswered: it was never dispatched, the client resends it; the
//     RECV in flight is cancelled); connections still in their handshake
//     get a second to send HELLO and are refused BUSY.
//  3. Each loop keeps sending replies until its session has nothing
//     executing, then sends GOODBYE, shuts the socket down, waits for
//     every SQE of its ring and every op it started, and closes the ring,
//     the socket and the eventfd. If Shutdown's context ends first, the
//     remaining connections are aborted: no GOODBYE, but each loop still
//     waits for its I/O, so that no buffer is given back while the kernel
//     may use it.
//  4. Every writable export is fdatasynced, then closed.
//
// # Goroutines
//
// Every goroutine has an owner that waits for it: the server's WaitGroup
// owns the Serve loops, the connection goroutines and the janitor
// (linger); a connection owns its sync helpers and bridge copies; a Serve
// call owns the goroutine that closes its listener. Every blocking call
// has a way out: the handshake has deadlines, the loop sleeps only in
// io_uring_enter with the eventfd armed (and a timeout of a quarter of
// IdleTimeout), helpers end when their channel closes, the bridge ends
// when its net.Conn is closed, and Shutdown's context bounds the rest.
package export
