//go:build linux

package backend

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// withoutDACOverride runs fn on a thread that has dropped CAP_DAC_OVERRIDE
// and CAP_DAC_READ_SEARCH (capabilities are per thread), so that root sees
// permission bits. The thread is never unlocked: it dies with the goroutine.
func withoutDACOverride(t *testing.T, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		data[0].Effective &^= 1<<unix.CAP_DAC_OVERRIDE | 1<<unix.CAP_DAC_READ_SEARCH
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		fn()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("dropping CAP_DAC_OVERRIDE: %v", err)
	}
}

// mountRamfs mounts a ramfs (a filesystem without O_DIRECT, fallocate or
// holes) on a test directory; root only.
func mountRamfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting a ramfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("ramfs", dir, "ramfs", 0, "size=64m"); err != nil {
		t.Skipf("skipping: mount ramfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	odd := filepath.Join(dir, "odd")
	os.WriteFile(odd, make([]byte, 1000), 0o600)
	readable := filepath.Join(dir, "readonly-perm")
	os.WriteFile(readable, make([]byte, 4096), 0o400)
	noperm := filepath.Join(dir, "noperm")
	os.WriteFile(noperm, make([]byte, 4096), 0)
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	asNonRoot := func(fn func()) { fn() }
	if os.Geteuid() == 0 {
		asNonRoot = func(fn func()) { withoutDACOverride(t, fn) }
	}

	tests := []struct {
		name  string
		path  string
		o     Options
		run   func(func()) // wraps Open, e.g. without CAP_DAC_OVERRIDE
		errno syscall.Errno
		want  []string
	}{
		{name: "missing", path: filepath.Join(dir, "nope"), errno: unix.ENOENT, want: []string{"does not exist"}},
		{name: "directory", path: dir, errno: unix.EISDIR, want: []string{"is a directory"}},
		{name: "char device", path: "/dev/null", errno: unix.ENODEV, want: []string{"is a character device", "not a regular file or block device"}},
		{name: "fifo", path: fifo, errno: unix.EINVAL, want: []string{"named pipe"}},
		{name: "empty", path: empty, errno: unix.EINVAL, want: []string{"is empty (size 0)"}},
		{name: "empty buffered", path: empty, o: Options{Buffered: true}, errno: unix.EINVAL, want: []string{"is empty"}},
		{name: "size not multiple", path: odd, o: Options{Buffered: true}, errno: unix.EINVAL, want: []string{"(1000 bytes) is not a multiple of its logical block size 512"}},
		{name: "size not multiple direct", path: odd, errno: unix.EINVAL, want: []string{"not a multiple of its logical block size"}},
		{name: "permission denied rw", path: readable, run: asNonRoot, errno: unix.EACCES, want: []string{"read-write: permission denied"}},
		{name: "permission denied ro", path: noperm, o: Options{ReadOnly: true}, run: asNonRoot, errno: unix.EACCES, want: []string{"read-only: permission denied"}},
	}
	if os.Geteuid() == 0 {
		rd := mountRamfs(t)
		nodirect := filepath.Join(rd, "img")
		os.WriteFile(nodirect, make([]byte, 8192), 0o600)
		tests = append(tests, struct {
			name  string
			path  string
			o     Options
			run   func(func())
			errno syscall.Errno
			want  []string
		}{name: "no O_DIRECT", path: nodirect, errno: unix.EINVAL, want: []string{"ramfs filesystem does not support O_DIRECT", "Buffered"}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f *File
			var err error
			open := func() { f, err = Open(tt.path, tt.o) }
			if tt.run != nil {
				tt.run(open)
			} else {
				open()
			}
			if err == nil {
				f.Close()
				t.Fatalf("Open(%s, %+v) succeeded", tt.path, tt.o)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), tt.path) {
				t.Errorf("error %q does not name the path", err)
			}
			if got := Errno(err); got != tt.errno {
				t.Errorf("Errno = %v, want %v (error %q)", got, tt.errno, err)
			}
			t.Logf("%v", err)
		})
	}
	// The same permission-restricted file opens read-only, and the ramfs
	// file opens Buffered.
	asNonRoot(func() {
		f, err := Open(readable, Options{ReadOnly: true})
		if err != nil {
			t.Errorf("read-only open of a 0400 file: %v", err)
			return
		}
		f.Close()
	})
}

func TestOpenReadOnlyDevice(t *testing.T) {
	dev, _ := loopDevice(t, 1<<20)
	fd := mustOpenFd(t, dev)
	if err := unix.IoctlSetPointerInt(fd, unix.BLKROSET, 1); err != nil {
		t.Fatalf("BLKROSET: %v", err)
	}
	// The flag outlives the loop attachment: clear it before the detach
	// (Cleanups run last-registered first) or the next user of this loop
	// device inherits a read-only disk.
	t.Cleanup(func() {
		if err := unix.IoctlSetPointerInt(fd, unix.BLKROSET, 0); err != nil {
			t.Errorf("BLKROSET 0 on %s: %v", dev, err)
		}
	})
	_, err := Open(dev, Options{})
	if err == nil || Errno(err) != unix.EROFS || !strings.Contains(err.Error(), "open it with ReadOnly") {
		t.Fatalf("read-write open of a read-only device: %v", err)
	}
	f := openFile(t, dev, Options{ReadOnly: true})
	if !f.ReadOnly() || f.Caps() != (Caps{}) {
		t.Fatalf("read-only device: ReadOnly %v caps %+v", f.ReadOnly(), f.Caps())
	}
}

func mustOpenFd(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func TestOpenRegularFile(t *testing.T) {
	path := tempFile(t, 1<<20)
	f := openFile(t, path, Options{})
	if f.Size() != 1<<20 || f.IsBlockDevice() || f.ReadOnly() || f.Buffered() || f.Path() != path || f.Fd() < 0 {
		t.Fatalf("bad file: %s", f)
	}
	var sx unix.Statx_t
	if err := unix.Statx(f.Fd(), "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &sx); err != nil {
		t.Fatal(err)
	}
	want := uint32(512)
	if sx.Mask&unix.STATX_DIOALIGN != 0 {
		want = max(512, sx.Dio_offset_align)
		if !strings.Contains(f.String(), "statx dio_offset_align") {
			t.Errorf("String does not say where the block size came from: %s", f)
		}
	}
	if f.LogicalBlockSize() != want {
		t.Errorf("logical block size %d, want %d", f.LogicalBlockSize(), want)
	}
	var st unix.Stat_t
	unix.Fstat(f.Fd(), &st)
	if f.PhysicalBlockSize() != uint32(st.Blksize) {
		t.Errorf("physical block size %d, want st_blksize %d", f.PhysicalBlockSize(), st.Blksize)
	}
	c := f.Caps()
	max32 := uint64(math.MaxUint32 / f.LogicalBlockSize() * f.LogicalBlockSize())
	wantCaps := Caps{Flush: true, FUA: true, Discard: true, WriteZeroes: true,
		DiscardGranularity: uint32(st.Blksize), MaxDiscardBytes: max32, MaxWriteZeroesBytes: max32}
	if c != wantCaps {
		t.Errorf("caps %+v, want %+v", c, wantCaps)
	}
	// The punch-hole probe at end of file changed nothing.
	var st2 unix.Stat_t
	unix.Stat(path, &st2)
	if st2.Size != 1<<20 || st2.Blocks != st.Blocks {
		t.Errorf("probe changed the file: size %d blocks %d -> %d", st2.Size, st.Blocks, st2.Blocks)
	}
	t.Logf("%s; caps %+v", f, c)

	ro := openFile(t, path, Options{ReadOnly: true})
	if !ro.ReadOnly() || ro.Caps() != (Caps{}) {
		t.Errorf("read-only: %s caps %+v", ro, ro.Caps())
	}
	b := openFile(t, path, Options{Buffered: true})
	if b.LogicalBlockSize() != 512 || !b.Buffered() {
		t.Errorf("buffered: %s", b)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := f.Check(OpRead, 0, 0, 512); Errno(err) != unix.EBADF {
		t.Fatalf("Check on a closed file: %v", err)
	}
}

func TestOpenBlockDevice(t *testing.T) {
	dev, _ := loopDevice(t, 8<<20)
	f := openFile(t, dev, Options{})
	fd := mustOpenFd(t, dev)
	lbs, _ := unix.IoctlGetInt(fd, unix.BLKSSZGET)
	pbs, _ := unix.IoctlGetUint32(fd, unix.BLKPBSZGET)
	if !f.IsBlockDevice() || f.Size() != 8<<20 || f.LogicalBlockSize() != uint32(lbs) || f.PhysicalBlockSize() != max(pbs, uint32(lbs)) {
		t.Fatalf("bad device: %s (BLKSSZGET %d BLKPBSZGET %d)", f, lbs, pbs)
	}
	c := f.Caps()
	q := "/sys/block/" + filepath.Base(dev) + "/queue/"
	gran := readSysUint(q + "discard_granularity")
	maxd := readSysUint(q + "discard_max_bytes")
	if !c.Flush || !c.FUA || !c.WriteZeroes || c.Discard != (maxd > 0) {
		t.Fatalf("caps %+v (discard_max_bytes %d)", c, maxd)
	}
	if c.Discard && (uint64(c.DiscardGranularity) != max(gran, uint64(lbs)) || c.MaxDiscardBytes > maxd || c.MaxDiscardBytes == 0) {
		t.Fatalf("discard caps %+v, sysfs granularity %d max %d", c, gran, maxd)
	}
	t.Logf("%s; caps %+v", f, c)
}

func TestCheck(t *testing.T) {
	path := tempFile(t, 1<<20)
	f := openFile(t, path, Options{})
	ro := openFile(t, path, Options{ReadOnly: true})
	nodiscard := openFile(t, path, Options{})
	nodiscard.caps.Discard = false // as on a filesystem without holes
	const size = 1 << 20
	tests := []struct {
		f      *File
		op     Op
		flags  Flags
		off    uint64
		length uint32
		errno  syscall.Errno
		want   string
	}{
		{f, OpRead, 0, 0, 512, 0, ""},
		{f, OpRead, 0, size - 4096, 4096, 0, ""},
		{f, OpWrite, FlagFUA, 4096, 8192, 0, ""},
		{f, OpFlush, 0, 0, 0, 0, ""},
		{f, OpFlush, FlagFUA, 12345, 7, 0, "flush ignores the range"},
		{f, OpDiscard, 0, 0, size, 0, ""},
		{f, OpWriteZeroes, FlagNoUnmap | FlagFUA, 512, 1024, 0, ""},
		{f, OpRead, FlagFUA, 0, 512, 0, "FUA on a read is ignored"},
		{f, OpRead, 0, 0, 0, unix.EINVAL, "of length 0"},
		{f, OpWrite, 0, 0, 0, unix.EINVAL, "of length 0"},
		{f, OpRead, 0, 100, 512, unix.EINVAL, "not aligned"},
		{f, OpWrite, 0, 0, 100, unix.EINVAL, "not aligned"},
		{f, OpDiscard, 0, 512, 513, unix.EINVAL, "not aligned"},
		{f, OpRead, 0, size - 512, 1024, unix.EINVAL, "ends beyond"},
		{f, OpRead, 0, size, 512, unix.EINVAL, "ends beyond"},
		{f, OpWrite, 0, size - 512, 1024, unix.ENOSPC, "ends beyond"},
		{f, OpDiscard, 0, size, 512, unix.ENOSPC, "ends beyond"},
		{f, OpWriteZeroes, 0, 1 << 40, 512, unix.ENOSPC, "ends beyond"},
		{f, OpRead, 0, math.MaxUint64 - 511, 1024, unix.EINVAL, "overflows"},
		{f, OpWrite, 0, math.MaxUint64 - 511, 512, unix.EINVAL, "overflows"},
		{f, OpWrite, 0, math.MaxUint64 - 1023, 512, unix.ENOSPC, "ends beyond"},
		{f, Op(9), 0, 0, 512, unix.EINVAL, "unknown operation"},
		{f, OpWrite, 1 << 7, 0, 512, unix.EINVAL, "unknown flags"},
		{f, OpWrite, FlagNoUnmap, 0, 512, unix.EINVAL, "NoUnmap"},
		{f, OpDiscard, FlagNoUnmap, 0, 512, unix.EINVAL, "NoUnmap"},
		{ro, OpRead, 0, 0, 512, 0, ""},
		{ro, OpFlush, 0, 0, 0, 0, ""},
		{ro, OpWrite, 0, 0, 512, unix.EROFS, "read-only"},
		{ro, OpWrite, 0, size, 512, unix.EROFS, "read-only"}, // before the range
		{ro, OpDiscard, 0, 0, 512, unix.EROFS, "read-only"},
		{ro, OpWriteZeroes, FlagNoUnmap, 0, 512, unix.EROFS, "read-only"},
		{nodiscard, OpDiscard, 0, 0, 512, unix.EOPNOTSUPP, "not supported"},
		{nodiscard, OpWriteZeroes, 0, 0, 512, 0, "write-zeroes always works"},
	}
	for i, tt := range tests {
		name := fmt.Sprintf("%d:%s:%d@%d", i, tt.op, tt.length, tt.off)
		err := tt.f.Check(tt.op, tt.flags, tt.off, tt.length)
		if got := Errno(err); got != tt.errno {
			t.Errorf("%s (%s): Errno %v, want %v (err %v)", name, tt.want, got, tt.errno, err)
			continue
		}
		if tt.errno != 0 && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %q does not say %q", name, err, tt.want)
		}
		if tt.errno != 0 && !errors.Is(err, tt.errno) {
			t.Errorf("%s: error %q does not wrap %v", name, err, tt.errno)
		}
	}
}

func TestErrno(t *testing.T) {
	if Errno(nil) != 0 {
		t.Fatal("Errno(nil) != 0")
	}
	if Errno(errors.New("x")) != unix.EIO {
		t.Fatal("plain error is not EIO")
	}
	if Errno(fmt.Errorf("a: %w", &OpError{Err: unix.ENOSPC})) != unix.ENOSPC {
		t.Fatal("wrapped OpError")
	}
	if Errno(errors.Join(errors.New("x"), unix.EDQUOT)) != unix.EDQUOT {
		t.Fatal("joined")
	}
	if Errno(ErrClosed) != unix.ESHUTDOWN || Errno(ErrBusy) != unix.EBUSY {
		t.Fatal("worker errors")
	}
	e := &OpError{Path: "/x", Op: OpWrite, Off: 4096, Len: 512, Err: unix.EIO}
	if e.Error() != "backend: write 512 bytes at offset 4096 of /x: input/output error" {
		t.Fatalf("OpError text %q", e)
	}
	if (&OpError{Path: "/x", Op: OpFlush, Err: unix.EIO}).Error() != "backend: flush /x: input/output error" {
		t.Fatal("flush OpError text")
	}
}
