//go:build linux

package backend

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/dst-dev/dst/internal/uring"
	"golang.org/x/sys/unix"
)

// Op is a block operation.
type Op uint8

const (
	OpRead Op = iota
	OpWrite
	OpFlush
	OpDiscard
	OpWriteZeroes
	numOps
)

var opNames = [...]string{"read", "write", "flush", "discard", "write-zeroes"}

func (o Op) String() string {
	if o < numOps {
		return opNames[o]
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// Flags modify an Op.
type Flags uint16

const (
	// FlagFUA makes a write (or discard, write-zeroes) durable before it
	// completes: the data and the metadata needed to read it back survive
	// a power loss. Ignored on reads and flushes.
	FlagFUA Flags = 1 << iota
	// FlagNoUnmap asks a write-zeroes to keep the range allocated (no hole,
	// no unmap): later writes to it cannot fail for lack of space. Only
	// valid with OpWriteZeroes.
	FlagNoUnmap

	knownFlags = FlagFUA | FlagNoUnmap
)

// Options configure Open.
type Options struct {
	// ReadOnly opens O_RDONLY; Check refuses writes, discards and
	// write-zeroes with EROFS.
	ReadOnly bool
	// Buffered opts out of O_DIRECT and goes through the page cache (for
	// filesystems without O_DIRECT, or to test). The default is O_DIRECT.
	Buffered bool
	// Faults, if set, injects storage faults (see Faults; tests and
	// debugging). Every request then takes the synchronous path.
	Faults *Faults
}

// Caps is what a File can really do, as probed at Open. The ublk target and
// the exporter advertise exactly these.
type Caps struct {
	Flush       bool // fdatasync means something (false on a ReadOnly File)
	FUA         bool // per-write durability (RWF_DSYNC)
	Discard     bool // OpDiscard is accepted
	WriteZeroes bool // OpWriteZeroes is accepted
	// DiscardGranularity is the unit below which a discard only zeroes and
	// frees nothing: the filesystem block size for files, the device's
	// discard_granularity for block devices. 0 without Discard.
	DiscardGranularity uint32
	// MaxDiscardBytes and MaxWriteZeroesBytes are the largest single
	// request worth sending (multiples of the logical block size); 0 when
	// the op is unsupported.
	MaxDiscardBytes     uint64
	MaxWriteZeroesBytes uint64
}

// File is a regular file or block device opened as a backend. All methods
// are safe for concurrent use; nothing on the request path (Check, Prep,
// Result) takes a lock, allocates on success, or makes a syscall.
type File struct {
	path     string
	fd       int
	size     uint64
	lbs      uint32
	pbs      uint32
	blockDev bool
	readOnly bool
	buffered bool
	caps     Caps
	fsType   string // filesystem holding the file, or "" for block devices
	lbsFrom  string // where the logical block size came from

	// punch: fallocate(PUNCH_HOLE) works on this file (probed); used for
	// discard and for write-zeroes without FlagNoUnmap.
	punch bool
	// bdevUnmapZeroes: the block device does REQ_OP_WRITE_ZEROES
	// (write_zeroes_max_bytes > 0), so a write-zeroes without NoUnmap can
	// use fallocate(PUNCH_HOLE), which may unmap.
	bdevUnmapZeroes bool
	// discardCmd: IORING_OP_URING_CMD BLOCK_URING_CMD_DISCARD is available
	// for this block device (probed at Open, Linux 6.12+).
	discardCmd bool

	// faults: storage fault injection (Options.Faults), nil normally.
	faults *Faults

	closed atomic.Bool
}

// BLOCK_URING_CMD_DISCARD from include/uapi/linux/blkdev.h: _IO(0x12, 0).
// The SQE carries the byte offset in addr and the length in addr3; ioprio,
// len, rw_flags and file_index must be 0 (block/ioctl.c blkdev_uring_cmd).
const blockURingCmdDiscard = 0x12 << 8

// maxRequest is the largest length that fits a request (uint32), rounded
// down to the logical block size.
func (f *File) maxRequest() uint64 {
	return uint64(math.MaxUint32 / f.lbs * f.lbs)
}

// Open opens path as a backend. See the package documentation for what is
// accepted and how sizes and capabilities are found.
func Open(path string, o Options) (*File, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		switch {
		case errors.Is(err, unix.ENOENT):
			return nil, errnoError(unix.ENOENT, "backend: open %s: file does not exist", path)
		case errors.Is(err, unix.EACCES):
			return nil, errnoError(unix.EACCES, "backend: open %s: permission denied", path)
		}
		return nil, fmt.Errorf("backend: open %s: %w", path, err)
	}
	if err := checkType(path, st.Mode); err != nil {
		return nil, err
	}
	flags := unix.O_CLOEXEC | unix.O_RDWR
	mode := "read-write"
	if o.ReadOnly {
		flags = unix.O_CLOEXEC | unix.O_RDONLY
		mode = "read-only"
	}
	if !o.Buffered {
		flags |= unix.O_DIRECT
	}
	var fd int
	for {
		var err error
		fd, err = unix.Open(path, flags, 0)
		if err == nil {
			break
		}
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
			return nil, errnoError(err.(syscall.Errno), "backend: open %s %s: permission denied", path, mode)
		case errors.Is(err, unix.EROFS):
			return nil, errnoError(unix.EROFS, "backend: open %s read-write: it is on a read-only filesystem or device; open it with ReadOnly", path)
		case errors.Is(err, unix.EINVAL) && !o.Buffered && st.Mode&unix.S_IFMT == unix.S_IFREG:
			return nil, errnoError(unix.EINVAL, "backend: open %s: the %s filesystem does not support O_DIRECT; open it with Buffered", path, fsTypeOf(st.Dev))
		}
		return nil, fmt.Errorf("backend: open %s %s: %w", path, mode, err)
	}
	f := &File{path: path, fd: fd, readOnly: o.ReadOnly, buffered: o.Buffered}
	if err := f.init(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if o.Faults != nil {
		if err := o.Faults.bind(f); err != nil {
			unix.Close(fd)
			return nil, err
		}
		f.faults = o.Faults
	}
	return f, nil
}

func checkType(path string, mode uint32) error {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFBLK:
		return nil
	case unix.S_IFDIR:
		return errnoError(unix.EISDIR, "backend: open %s: is a directory, not a regular file or block device", path)
	case unix.S_IFCHR:
		return errnoError(unix.ENODEV, "backend: open %s: is a character device, not a regular file or block device", path)
	case unix.S_IFIFO:
		return errnoError(unix.EINVAL, "backend: open %s: is a named pipe, not a regular file or block device", path)
	case unix.S_IFSOCK:
		return errnoError(unix.EINVAL, "backend: open %s: is a socket, not a regular file or block device", path)
	}
	return errnoError(unix.EINVAL, "backend: open %s: unsupported file type %#o", path, mode&unix.S_IFMT)
}

func (f *File) init() error {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return fmt.Errorf("backend: fstat %s: %w", f.path, err)
	}
	if err := checkType(f.path, st.Mode); err != nil { // replaced since the stat
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		if err := f.initBlockDevice(&st); err != nil {
			return err
		}
	} else if err := f.initRegular(&st); err != nil {
		return err
	}
	if f.size == 0 {
		return errnoError(unix.EINVAL, "backend: %s is empty (size 0): nothing to serve", f.path)
	}
	if f.size%uint64(f.lbs) != 0 {
		return errnoError(unix.EINVAL, "backend: size of %s (%d bytes) is not a multiple of its logical block size %d (%s)",
			f.path, f.size, f.lbs, f.lbsFrom)
	}
	f.pbs = max(f.pbs, f.lbs)
	f.probeCaps()
	return nil
}

func (f *File) initBlockDevice(st *unix.Stat_t) error {
	f.blockDev = true
	var size uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(f.fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); e != 0 {
		return fmt.Errorf("backend: ioctl(BLKGETSIZE64) on %s: %w", f.path, e)
	}
	f.size = size
	if ro, err := unix.IoctlGetInt(f.fd, unix.BLKROGET); err == nil && ro != 0 && !f.readOnly {
		// Linux lets a read-only device be opened for writing and fails
		// the writes with EPERM; refuse now instead.
		return errnoError(unix.EROFS, "backend: open %s read-write: the device is read-only; open it with ReadOnly", f.path)
	}
	lbs, err := unix.IoctlGetInt(f.fd, unix.BLKSSZGET)
	if err != nil || lbs <= 0 {
		return fmt.Errorf("backend: ioctl(BLKSSZGET) on %s: %d, %v", f.path, lbs, err)
	}
	f.lbs = uint32(lbs)
	f.lbsFrom = "BLKSSZGET"
	pbs, err := unix.IoctlGetUint32(f.fd, unix.BLKPBSZGET)
	if err != nil {
		pbs = f.lbs
	}
	f.pbs = pbs
	return nil
}

func (f *File) initRegular(st *unix.Stat_t) error {
	f.size = uint64(st.Size)
	f.pbs = uint32(st.Blksize)
	f.fsType = fsTypeOf(st.Dev)
	if f.buffered {
		f.lbs = 512
		f.lbsFrom = "buffered I/O: 512"
		return nil
	}
	var sx unix.Statx_t
	err := unix.Statx(f.fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &sx)
	if err == nil && sx.Mask&unix.STATX_DIOALIGN != 0 {
		if sx.Dio_offset_align == 0 {
			return errnoError(unix.EINVAL, "backend: %s: the %s filesystem does not support O_DIRECT for this file (statx dio_offset_align 0); open it with Buffered",
				f.path, f.fsType)
		}
		if sx.Dio_mem_align > uint32(os.Getpagesize()) {
			return errnoError(unix.EINVAL, "backend: %s: O_DIRECT needs %d-byte aligned memory (more than a page); open it with Buffered",
				f.path, sx.Dio_mem_align)
		}
		f.lbs = max(512, sx.Dio_offset_align)
		f.lbsFrom = "statx dio_offset_align " + strconv.Itoa(int(sx.Dio_offset_align))
		return nil
	}
	// No STATX_DIOALIGN (kernel before 6.1 or a filesystem that does not
	// report it): try a 512-byte O_DIRECT read, and use 4096 only when the
	// filesystem refuses it.
	f.lbs, f.lbsFrom = 512, "O_DIRECT probe: 512-byte read accepted"
	if f.size >= 512 {
		buf, err := uring.AlignedBuffer(4096)
		if err != nil {
			return err
		}
		defer uring.FreeBuffer(buf)
		_, err = unix.Pread(f.fd, buf[:512], 0)
		if errors.Is(err, unix.EINVAL) {
			f.lbs, f.lbsFrom = 4096, "O_DIRECT probe: 512-byte read refused, using 4096"
		}
	}
	return nil
}

// probeCaps decides Caps. It changes nothing the file's users can see: the
// punch-hole probe is at the end of the file (a no-op), the block-device
// probe is a discard past the end that the kernel refuses.
func (f *File) probeCaps() {
	if f.readOnly {
		return
	}
	f.caps.Flush = true
	f.caps.FUA = true
	f.caps.WriteZeroes = true
	f.caps.MaxWriteZeroesBytes = f.maxRequest()
	if f.blockDev {
		f.probeBlockDevice()
		return
	}
	// Punching a hole that starts at EOF (with KEEP_SIZE) frees nothing a
	// reader can see, but fails with EOPNOTSUPP where holes are unsupported.
	err := fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, f.size, uint64(f.lbs))
	f.punch = err == nil
	if f.punch {
		f.caps.Discard = true
		f.caps.DiscardGranularity = max(f.pbs, f.lbs)
		f.caps.MaxDiscardBytes = f.maxRequest()
	}
}

func (f *File) probeBlockDevice() {
	var st unix.Stat_t
	if unix.Fstat(f.fd, &st) != nil {
		return
	}
	q := queueDir(st.Rdev)
	maxDiscard := readSysUint(q + "/discard_max_bytes")
	f.bdevUnmapZeroes = readSysUint(q+"/write_zeroes_max_bytes") > 0
	if maxDiscard == 0 {
		return
	}
	f.caps.Discard = true
	f.caps.DiscardGranularity = uint32(max(readSysUint(q+"/discard_granularity"), uint64(f.lbs)))
	f.caps.MaxDiscardBytes = min(maxDiscard/uint64(f.lbs)*uint64(f.lbs), f.maxRequest())
	f.discardCmd = probeDiscardCmd(f.fd, f.size, f.lbs)
}

// probeDiscardCmd asks the kernel to discard one block past the end of the
// device through io_uring. A kernel with BLOCK_URING_CMD_DISCARD validates
// the range and says EINVAL; one without it says EOPNOTSUPP (no uring_cmd
// for block devices). Anything unexpected counts as "not available": the
// synchronous ioctl is always correct.
func probeDiscardCmd(fd int, size uint64, lbs uint32) bool {
	r, err := uring.New(uring.Options{Entries: 1})
	if err != nil {
		return false
	}
	defer r.Close()
	sqe := r.GetSQE()
	prepDiscardCmd(sqe, fd, size, lbs)
	var cq [1]uring.CQE
	if n, err := r.Wait(cq[:], 5e9); err != nil || n != 1 {
		return false
	}
	return cq[0].Res == -int32(unix.EINVAL)
}

func prepDiscardCmd(sqe *uring.SQE, fd int, off uint64, length uint32) {
	sqe.PrepURingCmd(fd, blockURingCmdDiscard)
	sqe.Addr = off
	sqe.Addr3 = uint64(length)
}

// queueDir returns the sysfs queue directory of a block device; partitions
// have none of their own and use their disk's.
func queueDir(rdev uint64) string {
	dev := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(rdev), unix.Minor(rdev))
	if _, err := os.Stat(dev + "/queue"); err == nil {
		return dev + "/queue"
	}
	return dev + "/../queue"
}

func readSysUint(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0
	}
	return v
}

// fsTypeOf names the filesystem of device dev from /proc/self/mountinfo.
func fsTypeOf(dev uint64) string {
	mf, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "unknown"
	}
	defer mf.Close()
	want := fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
	sc := bufio.NewScanner(mf)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[2] != want {
			continue
		}
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) {
				return fields[i+1]
			}
		}
	}
	return "unknown"
}

func fallocate(fd int, mode uint32, off, length uint64) error {
	for {
		err := unix.Fallocate(fd, mode, int64(off), int64(length))
		if err != unix.EINTR {
			return err
		}
	}
}

// Size is the size in bytes (a multiple of LogicalBlockSize).
func (f *File) Size() uint64 { return f.size }

// LogicalBlockSize is the unit of every offset and length: BLKSSZGET for
// block devices; for files with O_DIRECT the filesystem's dio_offset_align
// (at least 512), 512 with Buffered.
func (f *File) LogicalBlockSize() uint32 { return f.lbs }

// PhysicalBlockSize is BLKPBSZGET for block devices and st_blksize for
// files: writes of this size and alignment avoid read-modify-write.
func (f *File) PhysicalBlockSize() uint32 { return f.pbs }

// IsBlockDevice reports whether the File is a block device.
func (f *File) IsBlockDevice() bool { return f.blockDev }

// ReadOnly reports whether the File was opened read-only.
func (f *File) ReadOnly() bool { return f.readOnly }

// Buffered reports whether the File goes through the page cache.
func (f *File) Buffered() bool { return f.buffered }

// Fd is the open file descriptor (for SQEs, or to register with a ring).
func (f *File) Fd() int { return f.fd }

// Path is the path given to Open.
func (f *File) Path() string { return f.path }

// Caps is what the File can do; see Caps.
func (f *File) Caps() Caps { return f.caps }

// String describes the File and the choices Open made, for logs.
func (f *File) String() string {
	kind := "block device"
	if !f.blockDev {
		kind = "regular file on " + f.fsType
	}
	io := "O_DIRECT"
	if f.buffered {
		io = "buffered"
	}
	mode := "read-write"
	if f.readOnly {
		mode = "read-only"
	}
	discard := "no discard"
	if f.caps.Discard {
		switch {
		case !f.blockDev:
			discard = "discard by punching holes"
		case f.discardCmd:
			discard = "discard by io_uring BLOCK_URING_CMD_DISCARD"
		default:
			discard = "discard by ioctl(BLKDISCARD)"
		}
	}
	return fmt.Sprintf("%s: %s, %d bytes, logical block %d (%s), physical block %d, %s, %s, %s",
		f.path, kind, f.size, f.lbs, f.lbsFrom, f.pbs, io, mode, discard)
}

// Close closes the file descriptor. Requests still in flight on some ring
// must have completed first.
func (f *File) Close() error {
	if f.closed.Swap(true) {
		return nil
	}
	if f.faults != nil {
		f.faults.release()
	}
	if err := unix.Close(f.fd); err != nil {
		return fmt.Errorf("backend: close %s: %w", f.path, err)
	}
	return nil
}

// Faulty reports whether f injects storage faults (Options.Faults): every
// request must then go through Prep/Result or Sync, never around them.
func (f *File) Faulty() bool { return f.faults != nil }
