//go:build linux

// Package backend is DST's storage backend: a local regular file or block
// device that serves block requests. The same File serves two users:
//
//   - the ublk "file" target, whose queue goroutine owns an io_uring and
//     issues the backend's SQEs on that ring (Check, Prep, Result, and Sync
//     on a helper goroutine when Result says so);
//   - the exporter of remote devices, which has no ring of its own at the
//     request site and uses a Worker.
//
// The backend is ring-agnostic: it prepares SQEs and interprets
// completions, and never owns or enters the caller's ring. It uses only
// DST's io_uring layer, internal/uring, and follows its ownership and
// memory rules (buffers stay valid and referenced until the completion has
// been reaped).
//
// # Opening
//
// Open accepts a regular file or a block device (symlinks are followed)
// and refuses, with an error naming the cause and wrapping an errno: a
// missing path (ENOENT), a directory (EISDIR), a character device (ENODEV),
// a pipe or socket (EINVAL), permission denied (EACCES), a read-write open
// of something read-only (EROFS, suggesting ReadOnly), a filesystem without
// O_DIRECT (EINVAL, naming the filesystem and suggesting Buffered), an empty
// file, and a size that is not a multiple of the logical block size.
//
// Size comes from fstat for files and BLKGETSIZE64 for block devices. The
// logical block size — the unit of every offset and length — is BLKSSZGET
// for block devices. For files opened with O_DIRECT it is the filesystem's
// O_DIRECT offset alignment from statx(STATX_DIOALIGN) dio_offset_align (at
// least 512); where statx does not report it, a 512-byte O_DIRECT read
// decides between 512 and 4096. Buffered files use 512. File.String says
// which source was used. The physical block size is BLKPBSZGET or
// st_blksize.
//
// # Operations (the contract both users rely on)
//
// Every request is validated by Check first (see Errno for the errno of
// each refusal), then becomes exactly one SQE (Prep) and one CQE, whose
// result Result turns into StepDone plus the final error, or StepSync.
//
//   - OpRead, OpWrite: IORING_OP_READ / IORING_OP_WRITE of Length bytes at
//     byte offset Off, O_DIRECT unless Buffered. Buffers come from the
//     caller and must be aligned for O_DIRECT (page-aligned mmap memory);
//     Check does not look at buffer addresses (uring.CheckDirect does, for
//     tests). A short transfer is not an error: Result returns StepSync and
//     Sync redoes the whole request with pread/pwrite loops, which either
//     finishes it or returns the real error (EIO if the file ended early).
//   - OpWrite with FlagFUA: the same write with RWF_DSYNC, so the data and
//     the metadata needed to read it are durable when it completes.
//   - OpFlush: IORING_OP_FSYNC with IORING_FSYNC_DATASYNC (fdatasync). On a
//     block device this writes back its page cache and flushes the device
//     cache.
//   - OpDiscard on a regular file: IORING_OP_FALLOCATE with
//     FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE: the range reads as zeroes
//     afterwards and is a hole (SEEK_HOLE finds it; partial filesystem
//     blocks at the edges are zeroed, not freed). Supported only where the
//     probe at Open found punch-hole support.
//   - OpDiscard on a block device: BLKDISCARD semantics — the contents of
//     the range are undefined afterwards (zeroes on devices that say so;
//     the loop driver punches a hole in its backing file). On Linux 6.12+
//     it is IORING_OP_URING_CMD with BLOCK_URING_CMD_DISCARD (probed at
//     Open); otherwise, or when that command is refused with EOPNOTSUPP,
//     EINVAL or EAGAIN, Sync issues ioctl(BLKDISCARD). Devices whose
//     queue/discard_max_bytes is 0 have no Discard capability.
//   - OpWriteZeroes: the range reads as zeroes afterwards. With FlagNoUnmap
//     it stays allocated: fallocate(FALLOC_FL_ZERO_RANGE|KEEP_SIZE) — on
//     ext4/xfs files unwritten extents, on block devices
//     blkdev_issue_zeroout(BLKDEV_ZERO_NOUNMAP), which falls back to
//     writing zeroes in the kernel. Without FlagNoUnmap the backend
//     deallocates when it can: fallocate(PUNCH_HOLE|KEEP_SIZE) — a hole in
//     a file; on a block device that supports write-zeroes
//     (write_zeroes_max_bytes > 0) a REQ_OP_WRITE_ZEROES that may unmap.
//     Write-zeroes is always available on a writable File: where fallocate
//     says EOPNOTSUPP, Result returns StepSync and Sync tries ZERO_RANGE,
//     then ioctl(BLKZEROOUT) on block devices or plain writes of zeroes on
//     files.
//   - FlagFUA on OpDiscard or OpWriteZeroes: the operation followed by
//     fdatasync. That is two steps, so Prep emits a placeholder NOP and
//     Result returns StepSync: Sync does both (NeedsSync tells in advance).
//     FlagFUA on reads and flushes is ignored.
//   - ReadOnly: the file is opened O_RDONLY and Check refuses writes,
//     discards and write-zeroes with EROFS before anything reaches the disk.
//     Flush is accepted (a harmless fdatasync).
//
// Requests in flight at the same time have no order among themselves; a
// caller that needs one (a write after an overlapping write, a flush after
// the writes it covers) waits for the earlier completion first, as the
// block layer and NBD require of their clients anyway.
//
// # The synchronous path
//
// Result returns StepSync in the rare cases above. The caller then runs
// File.Sync(op, flags, off, buf, length) — the arguments it gave Prep — on
// a goroutine that may block (never the ring's owner), and uses its error
// exactly like a StepDone error: nil or an error wrapping an errno. The
// buffer must stay valid until Sync returns.
//
// # Capabilities
//
// Caps reports what to advertise. For a writable regular file: Flush, FUA
// and WriteZeroes always; Discard if punching a hole works (probed by a
// no-op punch at end of file), with the filesystem block size as
// granularity. For a writable block device: Flush, FUA, WriteZeroes
// always; Discard if queue/discard_max_bytes > 0, with the device's
// discard_granularity and discard_max_bytes. Read-only Files report no
// capabilities.
//
// # Worker
//
// A Worker serves Requests from any goroutine on its own ring, see Worker.
// It calls Check, Prep and Result itself, runs StepSync requests on a
// helper goroutine, and calls each Request's Done on its ring goroutine.
package backend
