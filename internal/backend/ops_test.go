//go:build linux

package backend

import (
	"bytes"
	"math/rand/v2"
	"os"
	"syscall"
	"testing"
	"unsafe"

	"github.com/dst-dev/dst/internal/uring"
	"golang.org/x/sys/unix"
)

func TestPrepEncoding(t *testing.T) {
	f := openFile(t, tempFile(t, 1<<20), Options{})
	buf := alignedBuf(t, 8192)
	addr := uint64(uintptr(unsafe.Pointer(&buf[0])))
	fd := int32(f.Fd())
	type want struct {
		opcode  uint8
		addr    uint64
		length  uint32
		off     uint64
		opFlags uint32
	}
	tests := []struct {
		name  string
		f     *File
		op    Op
		flags Flags
		off   uint64
		n     uint32
		want  want
	}{
		{"read", f, OpRead, 0, 4096, 8192, want{uring.OpRead, addr, 8192, 4096, 0}},
		{"read FUA ignored", f, OpRead, FlagFUA, 0, 512, want{uring.OpRead, addr, 512, 0, 0}},
		{"write", f, OpWrite, 0, 512, 4096, want{uring.OpWrite, addr, 4096, 512, 0}},
		{"write FUA", f, OpWrite, FlagFUA, 0, 4096, want{uring.OpWrite, addr, 4096, 0, unix.RWF_DSYNC}},
		{"flush", f, OpFlush, 0, 0, 0, want{uring.OpFsync, 0, 0, 0, uring.FsyncDatasync}},
		// IORING_OP_FALLOCATE: addr = length, len = mode, off = offset.
		{"discard", f, OpDiscard, 0, 8192, 1 << 20, want{uring.OpFallocate, 1 << 20, unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, 8192, 0}},
		{"zeroes", f, OpWriteZeroes, 0, 0, 4096, want{uring.OpFallocate, 4096, unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, 0, 0}},
		{"zeroes noUnmap", f, OpWriteZeroes, FlagNoUnmap, 0, 4096, want{uring.OpFallocate, 4096, unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE, 0, 0}},
		{"discard FUA", f, OpDiscard, FlagFUA, 0, 4096, want{uring.OpNop, 0, 0, 0, 0}},
		{"zeroes FUA", f, OpWriteZeroes, FlagFUA, 0, 4096, want{uring.OpNop, 0, 0, 0, 0}},
	}
	for _, tt := range tests {
		var sqe uring.SQE
		tt.f.Prep(&sqe, tt.op, tt.flags, tt.off, buf, tt.n)
		got := want{sqe.Opcode, sqe.Addr, sqe.Len, sqe.Off, sqe.OpFlags}
		if got != tt.want {
			t.Errorf("%s: sqe %+v, want %+v", tt.name, got, tt.want)
		}
		if tt.want.opcode != uring.OpNop && sqe.Fd != fd {
			t.Errorf("%s: fd %d, want %d", tt.name, sqe.Fd, fd)
		}
		if got := tt.f.NeedsSync(tt.op, tt.flags); got != (tt.want.opcode == uring.OpNop) {
			t.Errorf("%s: NeedsSync %v", tt.name, got)
		}
	}

	t.Run("block device", func(t *testing.T) {
		dev, _ := loopDevice(t, 1<<20)
		b := openFile(t, dev, Options{})
		if !b.discardCmd {
			t.Skip("kernel without BLOCK_URING_CMD_DISCARD (Linux < 6.12)")
		}
		var sqe uring.SQE
		b.Prep(&sqe, OpDiscard, 0, 4096, nil, 65536)
		// blkdev_uring_cmd: cmd_op in the low half of off, start in addr,
		// length in addr3, and len/rw_flags/ioprio/file_index zero.
		if sqe.Opcode != uring.OpURingCmd || sqe.Off != 0x1200 || sqe.Addr != 4096 || sqe.Addr3 != 65536 ||
			sqe.Len != 0 || sqe.OpFlags != 0 || sqe.IoPrio != 0 || sqe.FileIndex != 0 || sqe.Fd != int32(b.Fd()) {
			t.Fatalf("discard command sqe %+v", sqe)
		}
		sqe = uring.SQE{}
		b.Prep(&sqe, OpWriteZeroes, 0, 0, nil, 4096)
		if !b.bdevUnmapZeroes || sqe.Len != unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE {
			t.Fatalf("loop supports write-zeroes; write-zeroes without NoUnmap should punch: %+v", sqe)
		}
	})
}

// TestPrepAllocs checks that the hot path allocates nothing.
func TestPrepAllocs(t *testing.T) {
	f := openFile(t, tempFile(t, 1<<20), Options{})
	buf := alignedBuf(t, 4096)
	var sqe uring.SQE
	allocs := testing.AllocsPerRun(1000, func() {
		for _, op := range []Op{OpRead, OpWrite, OpFlush} {
			if err := f.Check(op, FlagFUA, 4096, 4096); err != nil {
				t.Fatal(err)
			}
			sqe = uring.SQE{}
			f.Prep(&sqe, op, FlagFUA, 4096, buf, 4096)
			res := int32(4096)
			if op == OpFlush {
				res = 0
			}
			if step, err := f.Result(op, FlagFUA, 4096, 4096, res); step != StepDone || err != nil {
				t.Fatal(step, err)
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("Check+Prep+Result allocate %v times per request", allocs)
	}
}

func TestResult(t *testing.T) {
	f := openFile(t, tempFile(t, 1<<20), Options{})
	bdev := &File{path: "/dev/fake", blockDev: true, discardCmd: true, lbs: 512, size: 1 << 20}
	tests := []struct {
		f     *File
		op    Op
		flags Flags
		res   int32
		step  Step
		errno syscall.Errno
	}{
		{f, OpRead, 0, 4096, StepDone, 0},
		{f, OpRead, 0, 2048, StepSync, 0}, // short: finish synchronously
		{f, OpRead, 0, 0, StepSync, 0},
		{f, OpWrite, 0, 512, StepSync, 0},
		{f, OpWrite, 0, -int32(unix.EIO), StepDone, unix.EIO},
		{f, OpWrite, 0, -int32(unix.ENOSPC), StepDone, unix.ENOSPC},
		{f, OpRead, 0, -int32(unix.EAGAIN), StepSync, 0},
		{f, OpFlush, 0, 0, StepDone, 0},
		{f, OpFlush, 0, -int32(unix.EIO), StepDone, unix.EIO},
		{f, OpDiscard, 0, 0, StepDone, 0},
		{f, OpDiscard, 0, -int32(unix.EOPNOTSUPP), StepDone, unix.EOPNOTSUPP},
		{f, OpDiscard, FlagFUA, 0, StepSync, 0},
		{f, OpWriteZeroes, 0, -int32(unix.EOPNOTSUPP), StepSync, 0}, // write zeroes instead
		{f, OpWriteZeroes, FlagNoUnmap, -int32(unix.ENOSPC), StepDone, unix.ENOSPC},
		{f, OpWriteZeroes, FlagFUA, 0, StepSync, 0},
		{f, Op(7), 0, 0, StepDone, unix.EINVAL},
		{bdev, OpDiscard, 0, 0, StepDone, 0},
		{bdev, OpDiscard, 0, -int32(unix.EOPNOTSUPP), StepSync, 0}, // no uring_cmd: ioctl
		{bdev, OpDiscard, 0, -int32(unix.EINVAL), StepSync, 0},
		{bdev, OpDiscard, 0, -int32(unix.EAGAIN), StepSync, 0},
		{bdev, OpDiscard, 0, -int32(unix.EIO), StepDone, unix.EIO},
		{bdev, OpWriteZeroes, 0, -int32(unix.EOPNOTSUPP), StepSync, 0},
	}
	for i, tt := range tests {
		step, err := tt.f.Result(tt.op, tt.flags, 8192, 4096, tt.res)
		if step != tt.step || Errno(err) != tt.errno {
			t.Errorf("%d: %s flags %#x res %d on %s: %v %v, want %v %v", i, tt.op, tt.flags, tt.res, tt.f.path, step, err, tt.step, tt.errno)
		}
	}
	_, err := f.Result(OpWrite, 0, 8192, 4096, -int32(unix.EIO))
	if want := "backend: write 4096 bytes at offset 8192 of " + f.Path() + ": input/output error"; err.Error() != want {
		t.Errorf("error text %q, want %q", err, want)
	}
	noCmd := &File{path: "/dev/fake", blockDev: true, lbs: 512, size: 1 << 20}
	if step, _ := noCmd.Result(OpDiscard, 0, 0, 4096, 0); step != StepSync || !noCmd.NeedsSync(OpDiscard, 0) {
		t.Error("block device without BLOCK_URING_CMD_DISCARD must take the ioctl path")
	}
}

func stBlocks(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

// freed reports whether st_blocks went down by n bytes' worth, give or
// take the two 4 KiB extent-tree blocks that splitting an extent may cost.
func freed(before, after int64, n int64) bool {
	d := before - after
	return d <= n/512 && d >= n/512-16
}

// isHole reports whether [off, off+n) of path is one hole.
func isHole(t *testing.T, path string, off, n int64) bool {
	t.Helper()
	fd := mustOpenFd(t, path)
	h, err := unix.Seek(fd, off, unix.SEEK_HOLE)
	if err != nil || h != off {
		return false
	}
	d, err := unix.Seek(fd, off, unix.SEEK_DATA)
	return err == unix.ENXIO || (err == nil && d >= off+n)
}

func cachestat(t *testing.T, fd int, off, n uint64) unix.Cachestat_t {
	t.Helper()
	var cs unix.Cachestat_t
	if err := unix.Cachestat(uint(fd), &unix.CachestatRange{Off: off, Len: n}, &cs, 0); err != nil {
		t.Skipf("cachestat: %v", err)
	}
	return cs
}

// opsEnv runs every op through a real ring against one File and keeps a
// model of the expected contents.
type opsEnv struct {
	t     *testing.T
	r     *testRing
	f     *File
	path  string // what f opened
	model []byte
	buf   []byte
	rng   *rand.Rand
}

func newOpsEnv(t *testing.T, f *File, path string) *opsEnv {
	e := &opsEnv{t: t, r: newTestRing(t), f: f, path: path, model: make([]byte, f.Size()),
		buf: alignedBuf(t, 1<<20), rng: rand.New(rand.NewPCG(7, 8))}
	pattern(e.model, 0)
	return e
}

func (e *opsEnv) write(flags Flags, off uint64, n uint32) {
	e.t.Helper()
	b := e.buf[:n]
	for i := range b {
		b[i] = byte(e.rng.Uint32())
	}
	if step := e.r.must(e.f, OpWrite, flags, off, b, n); step != StepDone {
		e.t.Fatalf("write took step %v", step)
	}
	copy(e.model[off:], b)
}

func (e *opsEnv) readCheck(off uint64, n uint32) {
	e.t.Helper()
	b := e.buf[:n]
	clear(b)
	e.r.must(e.f, OpRead, 0, off, b, n)
	if !bytes.Equal(b, e.model[off:off+uint64(n)]) {
		e.t.Fatalf("read %d@%d differs from what was written", n, off)
	}
}

func (e *opsEnv) zero(off uint64, n uint32) { clear(e.model[off : off+uint64(n)]) }

func (e *opsEnv) compareAll() {
	e.t.Helper()
	got := readBack(e.t, e.path, len(e.model))
	if !bytes.Equal(got, e.model) {
		for i := range got {
			if got[i] != e.model[i] {
				e.t.Fatalf("%s differs from the model first at byte %d", e.path, i)
			}
		}
	}
}

func TestOpsRegularFile(t *testing.T) {
	const size = 4 << 20
	path := tempFile(t, size)
	f := openFile(t, path, Options{})
	e := newOpsEnv(t, f, path)

	t.Run("write read", func(t *testing.T) {
		e.t = t
		for _, w := range []struct {
			off uint64
			n   uint32
		}{{0, 512}, {512, 4096}, {8192, 65536}, {size - 4096, 4096}, {1 << 20, 1 << 20}} {
			e.write(0, w.off, w.n)
			e.readCheck(w.off, w.n)
		}
		e.compareAll()
	})
	t.Run("FUA write", func(t *testing.T) {
		e.t = t
		e.write(FlagFUA, 12288, 8192)
		e.readCheck(12288, 8192)
		e.compareAll()
	})
	t.Run("flush", func(t *testing.T) {
		e.t = t
		// Dirty the page cache through a second, buffered fd; the ring's
		// fdatasync on our O_DIRECT fd must write it back.
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		data := bytes.Repeat([]byte{0xf1}, 65536)
		if _, err := unix.Pwrite(fd, data, 2<<20); err != nil {
			t.Fatal(err)
		}
		copy(e.model[2<<20:], data)
		if cs := cachestat(t, fd, 2<<20, 65536); cs.Dirty == 0 {
			t.Fatalf("buffered write left no dirty pages: %+v", cs)
		}
		e.r.must(f, OpFlush, 0, 0, nil, 0)
		if cs := cachestat(t, fd, 2<<20, 65536); cs.Dirty != 0 || cs.Writeback != 0 {
			t.Fatalf("after the ring's fdatasync: %+v, want no dirty or writeback pages", cs)
		}
		e.compareAll()
	})
	t.Run("discard", func(t *testing.T) {
		e.t = t
		before := stBlocks(t, path)
		e.r.must(f, OpDiscard, 0, 1<<20, nil, 65536)
		e.zero(1<<20, 65536)
		if !isHole(t, path, 1<<20, 65536) {
			t.Fatal("SEEK_HOLE does not find the discarded range")
		}
		if after := stBlocks(t, path); !freed(before, after, 65536) {
			t.Fatalf("st_blocks %d -> %d, want 128 fewer", before, after)
		}
		e.readCheck(1<<20-4096, 65536+8192)
		// An unaligned (512-byte) discard zeroes the partial blocks.
		e.r.must(f, OpDiscard, 0, 3<<20+512, nil, 1024)
		e.zero(3<<20+512, 1024)
		e.compareAll()
	})
	t.Run("write-zeroes NoUnmap", func(t *testing.T) {
		e.t = t
		e.write(0, 1<<19, 65536)
		before := stBlocks(t, path)
		e.r.must(f, OpWriteZeroes, FlagNoUnmap, 1<<19, nil, 65536)
		e.zero(1<<19, 65536)
		if after := stBlocks(t, path); after < before {
			// (It may grow by an extent-tree block: the range became
			// unwritten extents, still allocated.)
			t.Fatalf("st_blocks %d -> %d: NoUnmap deallocated", before, after)
		}
		e.readCheck(1<<19, 65536)
		e.compareAll()
	})
	t.Run("write-zeroes unmap", func(t *testing.T) {
		e.t = t
		e.write(0, 3<<19, 65536)
		before := stBlocks(t, path)
		e.r.must(f, OpWriteZeroes, 0, 3<<19, nil, 65536)
		e.zero(3<<19, 65536)
		if after := stBlocks(t, path); !freed(before, after, 65536) || !isHole(t, path, 3<<19, 65536) {
			t.Fatalf("st_blocks %d -> %d, hole %v: want the range deallocated", before, after, isHole(t, path, 3<<19, 65536))
		}
		e.compareAll()
	})
	t.Run("FUA discard and write-zeroes", func(t *testing.T) {
		e.t = t
		if step := e.r.must(f, OpDiscard, FlagFUA, 40960, nil, 8192); step != StepSync {
			t.Fatalf("FUA discard step %v", step)
		}
		e.zero(40960, 8192)
		if step := e.r.must(f, OpWriteZeroes, FlagFUA|FlagNoUnmap, 61440, nil, 4096); step != StepSync {
			t.Fatalf("FUA write-zeroes step %v", step)
		}
		e.zero(61440, 4096)
		e.compareAll()
	})
	t.Run("short read", func(t *testing.T) {
		e.t = t
		// Another process truncates the file under us: the O_DIRECT read
		// past the new end returns 0 bytes, Result asks for the
		// synchronous path, and that reports EIO.
		g := openFile(t, tempFile(t, 1<<20), Options{})
		if err := unix.Ftruncate(g.Fd(), 1<<19); err != nil {
			t.Fatal(err)
		}
		step, err := e.r.do(g, OpRead, 0, 3<<18, e.buf[:4096], 4096)
		if step != StepSync || Errno(err) != unix.EIO {
			t.Fatalf("read past a shrunken end: step %v err %v, want sync and EIO", step, err)
		}
	})
}

func TestOpsBufferedFUA(t *testing.T) {
	path := tempFile(t, 1<<20)
	f := openFile(t, path, Options{Buffered: true})
	r := newTestRing(t)
	buf := alignedBuf(t, 8192)
	for i := range buf {
		buf[i] = byte(i)
	}
	// A plain buffered write leaves dirty pages; a FUA one (RWF_DSYNC)
	// writes them back before it completes.
	r.must(f, OpWrite, 0, 0, buf, 8192)
	if cs := cachestat(t, f.Fd(), 0, 8192); cs.Dirty == 0 {
		t.Fatalf("plain buffered write: %+v, want dirty pages", cs)
	}
	r.must(f, OpWrite, FlagFUA, 65536, buf, 8192)
	if cs := cachestat(t, f.Fd(), 65536, 8192); cs.Dirty != 0 || cs.Writeback != 0 || cs.Cache == 0 {
		t.Fatalf("FUA buffered write: %+v, want cached and clean", cs)
	}
	r.must(f, OpFlush, 0, 0, nil, 0)
	if cs := cachestat(t, f.Fd(), 0, 8192); cs.Dirty != 0 {
		t.Fatalf("after flush: %+v", cs)
	}
	if got := readBack(t, path, 1<<20); !bytes.Equal(got[65536:65536+8192], buf) || !bytes.Equal(got[:8192], buf) {
		t.Fatal("buffered data differs")
	}
}

// TestOpsNoFallocate uses a ramfs (Buffered: no O_DIRECT there), which has
// neither holes nor ZERO_RANGE: no Discard capability, and write-zeroes
// falls back to writing zeroes through Sync.
func TestOpsNoFallocate(t *testing.T) {
	dir := mountRamfs(t)
	path := dir + "/img"
	fillFile(t, path, 1<<20)
	f := openFile(t, path, Options{Buffered: true})
	c := f.Caps()
	if c.Discard || !c.WriteZeroes {
		t.Fatalf("ramfs caps %+v: want no discard, write-zeroes", c)
	}
	if err := f.Check(OpDiscard, 0, 0, 4096); Errno(err) != unix.EOPNOTSUPP {
		t.Fatalf("discard on ramfs: %v", err)
	}
	e := newOpsEnv(t, f, path)
	for _, flags := range []Flags{0, FlagNoUnmap, FlagFUA} {
		off := uint64(len(e.model)/2) + uint64(flags)*8192
		if step := e.r.must(f, OpWriteZeroes, flags, off, nil, 8192); step != StepSync {
			t.Fatalf("write-zeroes %#x on ramfs took step %v, want the sync fallback", flags, step)
		}
		e.zero(off, 8192)
	}
	e.compareAll()
}

func TestOpsLoopDevice(t *testing.T) {
	const size = 8 << 20
	dev, backing := loopDevice(t, size)
	f := openFile(t, dev, Options{})
	e := newOpsEnv(t, f, dev)

	t.Run("write read", func(t *testing.T) {
		e.t = t
		e.write(0, 0, 512)
		e.write(0, 4096, 1<<20)
		e.write(0, size-8192, 8192)
		e.readCheck(0, 1<<20)
		e.readCheck(size-8192, 8192)
		e.compareAll()
	})
	t.Run("FUA write", func(t *testing.T) {
		e.t = t
		e.write(FlagFUA, 2<<20, 65536)
		e.readCheck(2<<20, 65536)
		e.compareAll()
	})
	t.Run("flush", func(t *testing.T) {
		e.t = t
		fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		data := bytes.Repeat([]byte{0xf2}, 65536)
		if _, err := unix.Pwrite(fd, data, 3<<20); err != nil {
			t.Fatal(err)
		}
		copy(e.model[3<<20:], data)
		if cs := cachestat(t, fd, 3<<20, 65536); cs.Dirty == 0 {
			t.Fatalf("buffered write to the device left no dirty pages: %+v", cs)
		}
		e.r.must(f, OpFlush, 0, 0, nil, 0)
		if cs := cachestat(t, fd, 3<<20, 65536); cs.Dirty != 0 || cs.Writeback != 0 {
			t.Fatalf("after the ring's fdatasync on the device: %+v", cs)
		}
		e.compareAll()
	})
	t.Run("discard", func(t *testing.T) {
		e.t = t
		if !f.Caps().Discard {
			t.Skip("loop device without discard")
		}
		before := stBlocks(t, backing)
		step := e.r.must(f, OpDiscard, 0, 4<<20, nil, 1<<20)
		if f.discardCmd && step != StepDone {
			t.Fatalf("discard through BLOCK_URING_CMD_DISCARD took step %v", step)
		}
		e.zero(4<<20, 1<<20)
		if !isHole(t, backing, 4<<20, 1<<20) || !freed(before, stBlocks(t, backing), 1<<20) {
			t.Fatal("the loop driver did not punch the discarded range out of its backing file")
		}
		e.readCheck(4<<20, 1<<20)
		e.compareAll()
	})
	t.Run("discard ioctl fallback", func(t *testing.T) {
		e.t = t
		old := f.discardCmd
		f.discardCmd = false // as on Linux < 6.12
		defer func() { f.discardCmd = old }()
		if step := e.r.must(f, OpDiscard, 0, 5<<20, nil, 65536); step != StepSync {
			t.Fatalf("step %v, want sync (ioctl BLKDISCARD)", step)
		}
		e.zero(5<<20, 65536)
		if !isHole(t, backing, 5<<20, 65536) {
			t.Fatal("BLKDISCARD did not reach the backing file")
		}
		e.compareAll()
	})
	t.Run("write-zeroes NoUnmap", func(t *testing.T) {
		e.t = t
		before := stBlocks(t, backing)
		e.r.must(f, OpWriteZeroes, FlagNoUnmap, 6<<20, nil, 1<<20)
		e.zero(6<<20, 1<<20)
		if after := stBlocks(t, backing); after < before {
			t.Fatalf("backing st_blocks %d -> %d: NoUnmap deallocated", before, after)
		}
		e.readCheck(6<<20, 1<<20)
		e.compareAll()
	})
	t.Run("write-zeroes unmap", func(t *testing.T) {
		e.t = t
		before := stBlocks(t, backing)
		e.r.must(f, OpWriteZeroes, 0, 7<<20, nil, 1<<19)
		e.zero(7<<20, 1<<19)
		if after := stBlocks(t, backing); !freed(before, after, 1<<19) || !isHole(t, backing, 7<<20, 1<<19) {
			t.Fatalf("backing st_blocks %d -> %d: want the range unmapped", before, after)
		}
		e.compareAll()
	})
	t.Run("write-zeroes BLKZEROOUT fallback", func(t *testing.T) {
		e.t = t
		// What Sync does after fallocate says EOPNOTSUPP.
		e.write(0, 1<<20, 65536)
		if err := blkRangeIoctl(f.Fd(), unix.BLKZEROOUT, 1<<20, 65536); err != nil {
			t.Fatal(err)
		}
		e.zero(1<<20, 65536)
		e.compareAll()
	})
	t.Run("FUA discard and write-zeroes", func(t *testing.T) {
		e.t = t
		if step := e.r.must(f, OpDiscard, FlagFUA, 0, nil, 8192); step != StepSync {
			t.Fatalf("step %v", step)
		}
		e.zero(0, 8192)
		if step := e.r.must(f, OpWriteZeroes, FlagFUA, 16384, nil, 8192); step != StepSync {
			t.Fatalf("step %v", step)
		}
		e.zero(16384, 8192)
		e.compareAll()
	})
}

func TestReadOnlyRefusesBeforeDisk(t *testing.T) {
	path := tempFile(t, 1<<20)
	f := openFile(t, path, Options{ReadOnly: true})
	r := newTestRing(t)
	buf := alignedBuf(t, 4096)
	for _, op := range []Op{OpWrite, OpDiscard, OpWriteZeroes} {
		if _, err := r.do(f, op, 0, 0, buf, 4096); Errno(err) != unix.EROFS {
			t.Fatalf("%s on a read-only file: %v, want EROFS", op, err)
		}
		if err := f.Sync(op, 0, 0, buf, 4096); Errno(err) != unix.EROFS {
			t.Fatalf("Sync %s on a read-only file: %v, want EROFS", op, err)
		}
	}
	r.must(f, OpRead, 0, 0, buf, 4096)
	r.must(f, OpFlush, 0, 0, nil, 0)
	want := make([]byte, 4096)
	pattern(want, 0)
	if !bytes.Equal(buf, want) {
		t.Fatal("read-only read returned wrong data")
	}
	if got := readBack(t, path, 1<<20); !bytes.Equal(got[:4096], want) {
		t.Fatal("read-only file changed")
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}
