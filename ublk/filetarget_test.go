//go:build linux

package ublk

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/internal/backend"
	"github.com/dst-dev/dst/internal/uring"
)

// The file target runs here through the real queue loop against the fake
// kernel of queue_test.go, on real files opened with O_DIRECT: a file on
// the test directory's filesystem (ext4 on the development machines), a
// file on tmpfs, and a loop block device with direct I/O.

// backing is one kind of storage the tests run on.
type backing struct {
	name string
	// make creates size bytes of storage filled with pattern and returns
	// the path to open and the regular file that finally holds the data
	// (the same path, or the loop device's backing file).
	make func(t *testing.T, size int) (path, file string)
	// mode forces a path on tmpfs, where the target would copy through a
	// mapping: "pread" (pread and pwrite on the queue goroutine) or "ring"
	// (io_uring, which hands each request to an io-wq thread).
	mode string
}

func (b backing) tune(tgt *FileTarget) { tgt.force(b.mode) }

// force switches a target on tmpfs to another data path (tests only).
func (t *FileTarget) force(mode string) {
	if mode == "" {
		return
	}
	if t.mem != nil {
		t.mem.Unmap()
		t.mem = nil
	}
	t.inline = mode == "pread"
}

func backings() []backing {
	return []backing{
		{name: "file", make: func(t *testing.T, size int) (string, string) {
			p := patternFile(t, t.TempDir(), size)
			return p, p
		}},
		{name: "tmpfs", make: func(t *testing.T, size int) (string, string) {
			p := patternFile(t, tmpfsDir(t), size)
			return p, p
		}},
		{name: "tmpfs-pread", mode: "pread", make: func(t *testing.T, size int) (string, string) {
			p := patternFile(t, tmpfsDir(t), size)
			return p, p
		}},
		{name: "tmpfs-ring", mode: "ring", make: func(t *testing.T, size int) (string, string) {
			p := patternFile(t, tmpfsDir(t), size)
			return p, p
		}},
		{name: "loop", make: func(t *testing.T, size int) (string, string) {
			file := patternFile(t, t.TempDir(), size)
			return loopDev(t, file), file
		}},
	}
}

func patternFile(t *testing.T, dir string, size int) string {
	t.Helper()
	path := filepath.Join(dir, "backing.img")
	data := make([]byte, size)
	pattern(data, 0)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// pattern fills b with bytes that depend on their offset.
func pattern(b []byte, off uint64) {
	for i := range b {
		o := off + uint64(i)
		b[i] = byte(o>>9) ^ byte(o*7) ^ 0x5a
	}
}

// tmpfsDir is a fresh directory on tmpfs (/dev/shm), or the test skips.
func tmpfsDir(t *testing.T) string {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		t.Skip("skipping tmpfs backing: /dev/shm is not a tmpfs")
	}
	dir, err := os.MkdirTemp("/dev/shm", "dst-filetarget-")
	if err != nil {
		t.Skipf("skipping tmpfs backing: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// loopDev attaches file to a loop device with direct I/O and detaches it
// in Cleanup; the test skips where that is impossible.
func loopDev(t *testing.T, file string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping loop-device backing: needs root for losetup")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("skipping loop-device backing: no /dev/loop-control (no loop driver)")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("skipping loop-device backing: losetup not installed")
	}
	out, err := exec.Command("losetup", "--find", "--show", "--direct-io=on", file).CombinedOutput()
	if err != nil {
		t.Skipf("skipping loop-device backing: losetup --find --show --direct-io=on: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		var out []byte
		var err error
		for range 50 { // the kernel may hold the device briefly after close
			if out, err = exec.Command("losetup", "-d", dev).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("losetup -d %s: %v: %s", dev, err, out)
	})
	return dev
}

// fileRig is a FileTarget served by a real queue and the fake kernel.
type fileRig struct {
	t    *testing.T
	fk   *fakeKernel
	tgt  *FileTarget
	wait func() *queue
	lbs  uint32
	id   uint64
	errs chan error // from ErrorLog (the first 16)
}

func newFileRig(t *testing.T, path string, o backend.Options, depth, maxIO int, userCopy bool, tune func(*FileTarget)) *fileRig {
	t.Helper()
	f, err := backend.Open(path, o)
	if err != nil {
		t.Fatalf("backend.Open(%s, %+v): %v", path, o, err)
	}
	tgt := NewFileTarget(f)
	if tune != nil {
		tune(tgt)
	}
	t.Logf("%s", tgt)
	errs := make(chan error, 16)
	tgt.ErrorLog = func(err error) {
		if testing.Verbose() {
			fmt.Println("file target:", err)
		}
		select {
		case errs <- err:
		default:
		}
	}
	t.Cleanup(func() { tgt.Close() })
	fk := newFakeKernel(t, depth)
	rig := &fileRig{t: t, fk: fk, tgt: tgt, lbs: f.LogicalBlockSize(), errs: errs}
	rig.wait = runQueue(t, fk, tgt, depth, maxIO, userCopy)
	return rig
}

// send queues one request and returns its id.
func (r *fileRig) send(op uint8, flags uint32, off uint64, length uint32, data []byte) uint64 {
	r.id++
	r.fk.send(r.t, r.id, op, flags, off>>sectorShift, length>>sectorShift, data)
	return r.id
}

// await collects the commits of ids (any order).
func (r *fileRig) await(ids ...uint64) map[uint64]commit {
	r.t.Helper()
	want := map[uint64]bool{}
	for _, id := range ids {
		want[id] = true
	}
	got := map[uint64]commit{}
	for len(got) < len(want) {
		select {
		case c := <-r.fk.commits:
			if !want[c.id] {
				r.t.Fatalf("commit for unexpected request %d", c.id)
			}
			if _, dup := got[c.id]; dup {
				r.t.Fatalf("request %d committed twice", c.id)
			}
			got[c.id] = c
		case <-time.After(20 * time.Second):
			r.t.Fatalf("%d of %d commits missing", len(want)-len(got), len(want))
		}
	}
	return got
}

// do runs one request to its commit.
func (r *fileRig) do(op uint8, flags uint32, off uint64, length uint32, data []byte) commit {
	r.t.Helper()
	id := r.send(op, flags, off, length, data)
	return r.await(id)[id]
}

// must runs one request and fails the test unless it succeeds; it
// returns the data of a read.
func (r *fileRig) must(op uint8, flags uint32, off uint64, length uint32, data []byte) []byte {
	r.t.Helper()
	c := r.do(op, flags, off, length, data)
	want := int32(0)
	if op == opRead || op == opWrite {
		want = int32(length)
	}
	if c.res != want {
		r.t.Fatalf("op %d flags %#x %d bytes at %d: result %d (%v), want %d", op, flags, length, off, c.res, errnoOf(c.res), want)
	}
	return c.data
}

// stop ends the queue and checks it left cleanly.
func (r *fileRig) stop() *queue {
	r.t.Helper()
	q := r.wait()
	if q.err != nil || q.busy() != 0 {
		r.t.Fatalf("queue ended with err %v, busy %d", q.err, q.busy())
	}
	return q
}

func errnoOf(res int32) error {
	if res >= 0 {
		return nil
	}
	return syscall.Errno(-res)
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileBlocks(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

// holeAt reports whether off lies in a hole of path (SEEK_HOLE from off
// stays at off).
func holeAt(t *testing.T, path string, off int64) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := unix.Seek(int(f.Fd()), off, unix.SEEK_HOLE)
	if err != nil {
		t.Fatal(err)
	}
	return h == off
}

func TestFileTargetGeometry(t *testing.T) {
	path := patternFile(t, t.TempDir(), 1<<20)
	for _, ro := range []bool{false, true} {
		t.Run(fmt.Sprintf("readOnly=%v", ro), func(t *testing.T) {
			f, err := backend.Open(path, backend.Options{ReadOnly: ro})
			if err != nil {
				t.Fatal(err)
			}
			tgt := NewFileTarget(f)
			defer tgt.Close()
			g := tgt.Geometry()
			caps := f.Caps()
			t.Logf("%s: %+v", f, g)
			if g.Size != 1<<20 || g.LogicalBlockSize != f.LogicalBlockSize() || g.ReadOnly != ro {
				t.Errorf("geometry %+v does not match the file (%s)", g, f)
			}
			if g.PhysicalBlockSize < g.LogicalBlockSize || g.PhysicalBlockSize&(g.PhysicalBlockSize-1) != 0 {
				t.Errorf("physical block size %d", g.PhysicalBlockSize)
			}
			// Flush and FUA must reach the disk: advertised whenever the
			// File can do them, never on a read-only File.
			if g.VolatileCache != caps.Flush || g.FUA != caps.FUA || g.VolatileCache == ro {
				t.Errorf("volatile cache %v FUA %v with caps %+v (read-only %v)", g.VolatileCache, g.FUA, caps, ro)
			}
			if g.Discard != caps.Discard || g.WriteZeroes != caps.WriteZeroes {
				t.Errorf("discard %v write-zeroes %v with caps %+v", g.Discard, g.WriteZeroes, caps)
			}
			if ro && (g.Discard || g.WriteZeroes) {
				t.Errorf("read-only file advertises discard %v write-zeroes %v", g.Discard, g.WriteZeroes)
			}
			if g.Discard && (g.DiscardGranularity%g.LogicalBlockSize != 0 || g.MaxDiscardBytes == 0) {
				t.Errorf("discard granularity %d max %d", g.DiscardGranularity, g.MaxDiscardBytes)
			}
			if _, _, err := buildParams(g, Options{Queues: 1, Depth: 64}); err != nil {
				t.Errorf("the device would refuse this geometry: %v", err)
			}
			if want := "file " + path; !strings.HasPrefix(tgt.Describe(), want) {
				t.Errorf("Describe() = %q, want prefix %q", tgt.Describe(), want)
			}
		})
	}
}

func TestClampPow2(t *testing.T) {
	for _, c := range []struct{ v, lo, hi, want uint32 }{
		{4096, 512, 65536, 4096}, {0, 512, 65536, 512}, {6144, 512, 65536, 4096},
		{1 << 20, 512, 65536, 65536}, {256, 4096, 65536, 4096},
	} {
		if got := clampPow2(c.v, c.lo, c.hi); got != c.want {
			t.Errorf("clampPow2(%d, %d, %d) = %d, want %d", c.v, c.lo, c.hi, got, c.want)
		}
	}
}

// TestFileTargetModel drives batches of concurrent, non-overlapping
// reads, writes (some FUA), write-zeroes, discards and flushes through the
// queue and checks every result, every byte read and finally the backing
// file against a model.
func TestFileTargetModel(t *testing.T) {
	for _, b := range backings() {
		for _, userCopy := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/userCopy=%v", b.name, userCopy), func(t *testing.T) {
				const size, depth, maxIO, chunk = 4 << 20, 32, 64 << 10, 64 << 10
				path, file := b.make(t, size)
				rig := newFileRig(t, path, backend.Options{}, depth, maxIO, userCopy, b.tune)
				caps := rig.tgt.File().Caps()
				lbs := int(rig.lbs)
				model := make([]byte, size)
				pattern(model, 0)
				rng := rand.New(rand.NewPCG(7, uint64(len(b.name))))
				for round := range 30 {
					type exp struct {
						res  int32
						read []byte
					}
					expect := map[uint64]exp{}
					used := map[int]bool{}
					for range 1 + rng.IntN(depth) {
						blk := rng.IntN(size / chunk)
						if used[blk] {
							continue
						}
						used[blk] = true
						n := lbs * (1 + rng.IntN(chunk/lbs))
						off := uint64(blk*chunk + rng.IntN((chunk-n)/lbs+1)*lbs)
						switch k := rng.IntN(10); {
						case k < 3:
							data := randBytes(rng, n)
							var fl uint32
							if k == 0 {
								fl = ioFlagFUA
							}
							copy(model[off:], data)
							expect[rig.send(opWrite, fl, off, uint32(n), data)] = exp{res: int32(n)}
						case k == 3:
							var fl uint32
							if rng.IntN(2) == 0 {
								fl = ioFlagNoUnmap
							}
							clear(model[off : off+uint64(n)])
							expect[rig.send(opWriteZeroes, fl, off, uint32(n), nil)] = exp{}
						case k == 4 && caps.Discard:
							clear(model[off : off+uint64(n)])
							expect[rig.send(opDiscard, 0, off, uint32(n), nil)] = exp{}
						case k == 5:
							expect[rig.send(opFlush, 0, 0, 0, nil)] = exp{}
						default:
							expect[rig.send(opRead, 0, off, uint32(n), nil)] = exp{res: int32(n), read: bytes.Clone(model[off : off+uint64(n)])}
						}
					}
					ids := make([]uint64, 0, len(expect))
					for id := range expect {
						ids = append(ids, id)
					}
					for id, c := range rig.await(ids...) {
						e := expect[id]
						if c.res != e.res {
							t.Fatalf("round %d request %d: result %d (%v), want %d", round, id, c.res, errnoOf(c.res), e.res)
						}
						if e.read != nil && !bytes.Equal(c.data, e.read) {
							t.Fatalf("round %d request %d: read data differs from the model", round, id)
						}
					}
				}
				rig.stop()
				rig.tgt.Close()
				if !bytes.Equal(readFile(t, file), model) {
					t.Fatal("backing file differs from the model")
				}
			})
		}
	}
}

// TestFileTargetOps checks each operation's effect on the backing storage.
func TestFileTargetOps(t *testing.T) {
	for _, b := range backings() {
		t.Run(b.name, func(t *testing.T) {
			const size, mib = 8 << 20, 1 << 20
			path, file := b.make(t, size)
			rig := newFileRig(t, path, backend.Options{}, 16, 1<<20, false, b.tune)
			caps := rig.tgt.File().Caps()
			rng := rand.New(rand.NewPCG(1, 2))
			zero := make([]byte, mib)

			// Plain and FUA writes land in the file and read back.
			for i, fl := range []uint32{0, ioFlagFUA} {
				data := randBytes(rng, 256<<10)
				off := uint64(i) * 256 << 10
				rig.must(opWrite, fl, off, uint32(len(data)), data)
				if got := rig.must(opRead, 0, off, uint32(len(data)), nil); !bytes.Equal(got, data) {
					t.Fatalf("read after write (flags %#x) differs", fl)
				}
				if !bytes.Equal(readFile(t, file)[off:off+uint64(len(data))], data) {
					t.Fatalf("write (flags %#x) did not reach the backing file", fl)
				}
			}
			rig.must(opFlush, 0, 0, 0, nil)
			rig.must(opFlush, ioFlagFUA, 0, 0, nil) // FUA on a flush is ignored

			// Discard: the range reads as zeroes and is a hole in the
			// backing file (the loop driver punches one too).
			if !caps.Discard {
				t.Logf("%s: no discard capability", rig.tgt.File())
			}
			for i, fl := range []uint32{0, ioFlagFUA} { // FUA: the helper path
				if !caps.Discard {
					break
				}
				off := uint64(2+i) * mib
				before := fileBlocks(t, file)
				rig.must(opDiscard, fl, off, mib, nil)
				if got := rig.must(opRead, 0, off, mib, nil); !bytes.Equal(got, zero) {
					t.Fatalf("discard (flags %#x): range does not read as zeroes", fl)
				}
				if !bytes.Equal(readFile(t, file)[off:off+mib], zero) {
					t.Fatalf("discard (flags %#x): backing file not zeroed", fl)
				}
				after := fileBlocks(t, file)
				if !holeAt(t, file, int64(off)) || after > before-mib/512+64 {
					t.Fatalf("discard (flags %#x): no hole at %d (blocks %d -> %d)", fl, off, before, after)
				}
			}

			// Write-zeroes: zeroes, with and without NoUnmap, also FUA
			// (helper path). Without NoUnmap a file gets a hole; with it
			// the blocks stay allocated where the filesystem can zero in
			// place (not tmpfs, which has no ZERO_RANGE: the backend writes
			// zeroes instead).
			for i, fl := range []uint32{0, ioFlagNoUnmap, ioFlagFUA, ioFlagFUA | ioFlagNoUnmap} {
				off := uint64(4+i) * mib
				before := fileBlocks(t, file)
				rig.must(opWriteZeroes, fl, off, mib, nil)
				if got := rig.must(opRead, 0, off, mib, nil); !bytes.Equal(got, zero) {
					t.Fatalf("write-zeroes (flags %#x): range does not read as zeroes", fl)
				}
				if !bytes.Equal(readFile(t, file)[off:off+mib], zero) {
					t.Fatalf("write-zeroes (flags %#x): backing file not zeroed", fl)
				}
				after := fileBlocks(t, file)
				t.Logf("write-zeroes flags %#x: backing blocks %d -> %d, hole %v", fl, before, after, holeAt(t, file, int64(off)))
				if fl&ioFlagNoUnmap != 0 && after < before-8 {
					t.Errorf("write-zeroes with NoUnmap (flags %#x) freed blocks: %d -> %d", fl, before, after)
				}
			}

			// Out of range and misaligned requests fail with backend.Check's
			// errno before anything reaches the disk (see
			// internal/backend/errors.go): reads EINVAL, writes ENOSPC.
			fileBefore := readFile(t, file)
			for _, c := range []struct {
				name   string
				op     uint8
				off    uint64
				length uint32
				errno  syscall.Errno
			}{
				{"read past the end", opRead, size, 4096, syscall.EINVAL},
				{"read across the end", opRead, size - 4096, 8192, syscall.EINVAL},
				{"write past the end", opWrite, size, 4096, syscall.ENOSPC},
				{"write across the end", opWrite, size - 4096, 8192, syscall.ENOSPC},
				{"write-zeroes across the end", opWriteZeroes, size - 4096, 8192, syscall.ENOSPC},
				{"discard across the end", opDiscard, size - 4096, 8192, syscall.ENOSPC},
			} {
				if c.op == opDiscard && !caps.Discard {
					continue
				}
				var data []byte
				if c.op == opWrite {
					data = randBytes(rng, int(c.length))
				}
				if res := rig.do(c.op, 0, c.off, c.length, data).res; res != -int32(c.errno) {
					t.Errorf("%s: result %d (%v), want -%s", c.name, res, errnoOf(res), c.errno)
				}
			}
			if rig.lbs > 512 {
				if res := rig.do(opRead, 0, 512, 512, nil).res; res != -int32(syscall.EINVAL) {
					t.Errorf("read misaligned for the %d-byte block size: result %d, want EINVAL", rig.lbs, res)
				}
			}
			if !bytes.Equal(readFile(t, file), fileBefore) {
				t.Error("refused requests changed the backing file")
			}
			rig.stop()
		})
	}
}

// TestFileTargetReadOnly: with a read-only File the device is read-only,
// reads and flushes work, and writes, discards and write-zeroes are refused
// with EROFS without touching the backing file.
func TestFileTargetReadOnly(t *testing.T) {
	for _, b := range backings() {
		if b.mode != "" {
			continue
		}
		t.Run(b.name, func(t *testing.T) {
			const size = 1 << 20
			path, file := b.make(t, size)
			before := readFile(t, file)
			rig := newFileRig(t, path, backend.Options{ReadOnly: true}, 8, 64<<10, false, b.tune)
			if g := rig.tgt.Geometry(); !g.ReadOnly || g.Discard || g.WriteZeroes || g.VolatileCache {
				t.Errorf("read-only geometry %+v", g)
			}
			if got := rig.must(opRead, 0, 4096, 8192, nil); !bytes.Equal(got, before[4096:4096+8192]) {
				t.Error("read from a read-only file returned wrong data")
			}
			rig.must(opFlush, 0, 0, 0, nil)
			for _, c := range []struct {
				op    uint8
				flags uint32
				data  []byte
			}{
				{opWrite, 0, bytes.Repeat([]byte{0xee}, 8192)},
				{opWrite, ioFlagFUA, bytes.Repeat([]byte{0xee}, 8192)},
				{opDiscard, 0, nil},
				{opWriteZeroes, 0, nil},
				{opWriteZeroes, ioFlagNoUnmap, nil},
			} {
				if res := rig.do(c.op, c.flags, 0, 8192, c.data).res; res != -int32(syscall.EROFS) {
					t.Errorf("op %d flags %#x on a read-only file: result %d (%v), want EROFS", c.op, c.flags, res, errnoOf(res))
				}
			}
			rig.stop()
			if !bytes.Equal(readFile(t, file), before) {
				t.Error("the read-only backing file changed")
			}
		})
	}
}

// TestFileTargetHelpers sends many requests that need the synchronous path
// at once: they all complete, on at most syncHelpers goroutines, which
// stop with the queue.
func TestFileTargetHelpers(t *testing.T) {
	const depth = 32
	path := patternFile(t, t.TempDir(), 4<<20)
	rig := newFileRig(t, path, backend.Options{}, depth, 64<<10, false, nil)
	var ids []uint64
	for i := range depth {
		ids = append(ids, rig.send(opWriteZeroes, ioFlagFUA, uint64(i)*64<<10, 64<<10, nil))
	}
	for id, c := range rig.await(ids...) {
		if c.res != 0 {
			t.Fatalf("request %d: %d (%v)", id, c.res, errnoOf(c.res))
		}
	}
	q := rig.stop()
	h := q.handler.(*fileQueue)
	if h.helpers < 1 || h.helpers > syncHelpers {
		t.Errorf("%d helpers started, want 1..%d", h.helpers, syncHelpers)
	}
	if n := h.syncBusy.Load(); n != 0 {
		t.Errorf("%d synchronous requests still counted busy", n)
	}
	if !bytes.Equal(readFile(t, path)[:depth*64<<10], make([]byte, depth*64<<10)) {
		t.Error("write-zeroes did not zero the file")
	}
}

// TestFileTargetErrorLog: failed requests reach ErrorLog with an error
// that names the operation and carries the errno.
func TestFileTargetErrorLog(t *testing.T) {
	path := patternFile(t, t.TempDir(), 1<<20)
	rig := newFileRig(t, path, backend.Options{}, 4, 64<<10, false, nil)
	if res := rig.do(opRead, 0, 1<<20, 4096, nil).res; res != -int32(syscall.EINVAL) {
		t.Fatalf("read past the end: %d", res)
	}
	select {
	case err := <-rig.errs:
		if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "read") {
			t.Errorf("ErrorLog got %v", err)
		}
	default:
		t.Error("ErrorLog not called for a failed request")
	}
	rig.stop()
}

// TestFileTargetInline: the target copies on the queue goroutine (through
// a mapping) exactly for files on tmpfs whose reads io_uring cannot
// complete inline (no RWF_NOWAIT).
func TestFileTargetInline(t *testing.T) {
	for _, b := range backings() {
		if b.mode != "" {
			continue
		}
		t.Run(b.name, func(t *testing.T) {
			path, _ := b.make(t, 1<<20)
			f, err := backend.Open(path, backend.Options{})
			if err != nil {
				t.Fatal(err)
			}
			tgt := NewFileTarget(f)
			defer tgt.Close()
			buf, err := uring.AlignedBuffer(4096)
			if err != nil {
				t.Fatal(err)
			}
			defer uring.FreeBuffer(buf)
			_, err = unix.Preadv2(f.Fd(), [][]byte{buf}, 0, unix.RWF_NOWAIT)
			want := b.name == "tmpfs" && err == unix.EOPNOTSUPP
			t.Logf("preadv2(RWF_NOWAIT): %v; %s", err, tgt)
			if tgt.inline != want || (tgt.mem != nil) != want {
				t.Errorf("inline = %v, mapped = %v, want %v", tgt.inline, tgt.mem != nil, want)
			}
		})
	}
}

// TestFileTargetMemSparse: on a sparse tmpfs file, reading through the
// device allocates nothing (holes are read with pread, not through the
// mapping), writes allocate what they write, and a discard frees it again.
func TestFileTargetMemSparse(t *testing.T) {
	const size, ps = 4 << 20, 4096
	path := filepath.Join(tmpfsDir(t), "sparse.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("dst!"), 2*ps/4)
	// One page of data at 1 MiB before the target starts (found by SEEK_DATA).
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data[:ps], 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rig := newFileRig(t, path, backend.Options{}, 8, 512<<10, false, nil)
	m := rig.tgt.mem
	if m == nil {
		t.Skip("target did not map the tmpfs file (tmpfs supports RWF_NOWAIT on this kernel?)")
	}
	if !m.IsData(1<<20, ps) || m.IsData(0, ps) || m.IsData(1<<20, 2*ps) {
		t.Fatal("data bitmap does not match the file's extents")
	}
	if b := fileBlocks(t, path); b != ps/512 {
		t.Fatalf("backing file has %d blocks, want %d", b, ps/512)
	}
	for off := uint64(0); off < size; off += 512 << 10 {
		got := rig.must(opRead, 0, off, 512<<10, nil)
		want := make([]byte, 512<<10)
		if off == 1<<20 {
			copy(want, data[:ps])
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read at %d: wrong data", off)
		}
	}
	if b := fileBlocks(t, path); b != ps/512 {
		t.Fatalf("reading the device allocated the backing file: %d blocks, want %d", b, ps/512)
	}
	rig.must(opWrite, 0, 2<<20+512, 2*ps, data) // touches 3 pages
	if b := fileBlocks(t, path); b != 4*ps/512 {
		t.Fatalf("after an 8 KiB write over 3 pages: %d blocks, want %d", b, 4*ps/512)
	}
	if got := rig.must(opRead, 0, 2<<20, 3*ps, nil); !bytes.Equal(got[512:512+2*ps], data) || !bytes.Equal(got[:512], make([]byte, 512)) {
		t.Fatal("read after write: wrong data")
	}
	rig.must(opDiscard, 0, 2<<20, 3*ps, nil)
	rig.must(opRead, 0, 2<<20, 3*ps, nil)
	if b := fileBlocks(t, path); b != ps/512 {
		t.Fatalf("after discard and a read of the range: %d blocks, want %d", b, ps/512)
	}
	rig.stop()
}

// TestFileTargetMemFault: a backing file truncated under the device makes
// reads of the lost range fail with EIO; the fault on the mapping must not
// kill the process.
func TestFileTargetMemFault(t *testing.T) {
	path := patternFile(t, tmpfsDir(t), 1<<20)
	rig := newFileRig(t, path, backend.Options{}, 4, 64<<10, false, nil)
	if rig.tgt.mem == nil {
		t.Skip("target did not map the tmpfs file")
	}
	if err := os.Truncate(path, 512<<10); err != nil {
		t.Fatal(err)
	}
	if res := rig.do(opRead, 0, 768<<10, 4096, nil).res; res != -int32(syscall.EIO) {
		t.Errorf("read beyond the truncated end: %d (%v), want EIO", res, errnoOf(res))
	}
	want := make([]byte, 4096)
	pattern(want, 4096)
	if got := rig.must(opRead, 0, 4096, 4096, nil); !bytes.Equal(got, want) {
		t.Error("read before the truncated end: wrong data")
	}
	rig.stop()
}

// TestFileTargetMemFull: writes into holes of a sparse file on a full
// tmpfs fault on the mapping; they must fail with ENOSPC (from the pwrite
// retry), not kill the process, and what fits must be written.
func TestFileTargetMemFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Skipf("skipping: mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	path := filepath.Join(dir, "sparse.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	rig := newFileRig(t, path, backend.Options{}, 4, 64<<10, false, nil)
	if rig.tgt.mem == nil {
		t.Skip("target did not map the tmpfs file")
	}
	data := bytes.Repeat([]byte{0xab}, 64<<10)
	var written uint64
	for off := uint64(0); off < 1<<20; off += 64 << 10 {
		res := rig.do(opWrite, 0, off, 64<<10, data).res
		if res == -int32(syscall.ENOSPC) {
			break
		}
		if res != 64<<10 {
			t.Fatalf("write at %d: %d (%v), want success or ENOSPC", off, res, errnoOf(res))
		}
		written = off + 64<<10
	}
	if written == 0 || written >= 1<<20 {
		t.Fatalf("%d bytes written before ENOSPC, want some but not all of 1 MiB on a 256 KiB tmpfs", written)
	}
	if got := rig.must(opRead, 0, 0, 64<<10, nil); !bytes.Equal(got, data) {
		t.Error("data written before the filesystem filled up reads back wrong")
	}
	rig.stop()
}

// TestFileTargetClose: Close closes the File.
func TestFileTargetClose(t *testing.T) {
	f, err := backend.Open(patternFile(t, t.TempDir(), 1<<20), backend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tgt := NewFileTarget(f)
	if err := tgt.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Check(backend.OpRead, 0, 0, 4096); !errors.Is(err, syscall.EBADF) {
		t.Errorf("Check after Close: %v, want EBADF", err)
	}
}

// ringRig drives a file queue handler by hand on a real ring, without the
// queue loop: for allocation counts and benchmarks of the ring path.
type ringRig struct {
	q    *queue
	h    *fileQueue
	cqes []uring.CQE
}

func newRingRig(tb testing.TB, tgt *FileTarget, depth, maxIO int) *ringRig {
	tb.Helper()
	q := newQueue(0, depth, maxIO, false, -1, 0)
	var err error
	q.ring, err = uring.New(uring.Options{Entries: uring.RoundPow2(uint32(2 * depth)), SingleIssuer: true, DeferTaskrun: true})
	if err != nil {
		tb.Fatal(err)
	}
	q.bufs, err = uring.AlignedBuffer(depth * maxIO)
	if err != nil {
		tb.Fatal(err)
	}
	h, err := tgt.NewQueue(&q.ctx)
	if err != nil {
		tb.Fatal(err)
	}
	q.handler = h
	q.ringH = h.(RingHandler)
	q.dispatching.Store(true) // as on the queue goroutine: Complete does not wake
	tb.Cleanup(func() {
		h.Close()
		q.ring.Close()
		uring.FreeBuffer(q.bufs)
	})
	return &ringRig{q: q, h: h.(*fileQueue), cqes: make([]uring.CQE, 2*depth)}
}

// batch runs one request per tag (4 KiB at offsets from offs) to
// completion and returns how many failed.
func (r *ringRig) batch(tb testing.TB, op Op, offs []uint64) int {
	q := r.q
	for tag := range q.depth {
		req := &q.reqs[tag]
		req.Op, req.Flags, req.Offset, req.Length = op, 0, offs[tag], 4096
		req.Queue, req.Tag = 0, uint16(tag)
		base := tag * q.maxIO
		req.Buf = q.bufs[base : base+4096 : base+4096]
		q.held++
		r.h.Handle(req)
	}
	for r.h.Inflight() > 0 {
		n, err := q.ring.Wait(r.cqes, -1)
		if err != nil {
			tb.Fatal(err)
		}
		for i := range n {
			r.h.HandleCQE(&r.cqes[i])
		}
	}
	failed := 0
	for _, tag := range q.done {
		if q.results[tag] != 4096 {
			failed++
		}
	}
	if len(q.done) != q.depth {
		failed += q.depth - len(q.done)
	}
	q.done = q.done[:0]
	q.held = 0
	return failed
}

func TestFileTargetZeroAllocs(t *testing.T) {
	const depth, size = 32, 4 << 20
	for _, b := range backings()[:4] {
		t.Run(b.name, func(t *testing.T) {
			path, _ := b.make(t, size)
			runtime.LockOSThread() // the ring is SingleIssuer
			defer runtime.UnlockOSThread()
			f, err := backend.Open(path, backend.Options{})
			if err != nil {
				t.Fatal(err)
			}
			tgt := NewFileTarget(f)
			b.tune(tgt)
			defer tgt.Close()
			r := newRingRig(t, tgt, depth, 64<<10)
			offs := make([]uint64, depth)
			rng := rand.New(rand.NewPCG(3, 4))
			for _, op := range []Op{OpRead, OpWrite} {
				allocs := testing.AllocsPerRun(50, func() {
					for i := range offs {
						offs[i] = uint64(rng.IntN(size/4096)) * 4096
					}
					if n := r.batch(t, op, offs); n != 0 {
						t.Fatalf("%d of %d %s requests failed", n, depth, op)
					}
				})
				if allocs != 0 {
					t.Errorf("%s: %.1f allocations per batch of %d requests, want 0", op, allocs, depth)
				}
			}
		})
	}
}

// BenchmarkFileTargetRing measures the target's data paths for batches of
// 32 random 4 KiB requests on a tmpfs file: io_uring (Check, Prep, the
// kernel's read or write on an io-wq thread, Result, Complete), the same
// with a registered (fixed) file, pread/pwrite, and copies through the
// mapping (the default on tmpfs).
func BenchmarkFileTargetRing(b *testing.B) {
	const depth, size = 32, 64 << 20
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		b.Skip("no tmpfs at /dev/shm")
	}
	dir, err := os.MkdirTemp("/dev/shm", "dst-bench-")
	if err != nil {
		b.Skip(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "backing.img")
	if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
		b.Fatal(err)
	}
	for _, op := range []Op{OpRead, OpWrite} {
		for _, mode := range []string{"ring", "fixed", "pread", "mmap"} {
			b.Run(fmt.Sprintf("%s/%s", op, mode), func(b *testing.B) {
				f, err := backend.Open(path, backend.Options{})
				if err != nil {
					b.Fatal(err)
				}
				tgt := NewFileTarget(f)
				defer tgt.Close()
				switch mode {
				case "fixed":
					tgt.force("ring")
					tgt.fixedFile = true
				case "ring", "pread":
					tgt.force(mode)
				}
				runtime.LockOSThread() // the ring is SingleIssuer
				defer runtime.UnlockOSThread()
				r := newRingRig(b, tgt, depth, 4096)
				offs := make([]uint64, depth)
				rng := rand.New(rand.NewPCG(5, 6))
				b.ReportAllocs()
				var ru0, ru1 unix.Rusage
				unix.Getrusage(unix.RUSAGE_SELF, &ru0)
				b.ResetTimer()
				for i := 0; i < b.N; i += depth {
					for j := range offs {
						offs[j] = uint64(rng.IntN(size/4096)) * 4096
					}
					if n := r.batch(b, op, offs); n != 0 {
						b.Fatalf("%d requests failed", n)
					}
				}
				b.StopTimer()
				unix.Getrusage(unix.RUSAGE_SELF, &ru1)
				// CPU time of the whole process (this thread, and io-wq
				// workers where the kernel punts the I/O) per request.
				cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
				b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}
