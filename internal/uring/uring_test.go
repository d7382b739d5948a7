//go:build linux

package uring

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func newRing(t testing.TB, o Options) *Ring {
	t.Helper()
	r, err := New(o)
	if err != nil {
		t.Fatalf("New(%+v): %v", o, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// one submits the prepared SQEs and returns exactly one completion.
func one(t testing.TB, r *Ring) CQE {
	t.Helper()
	var c [1]CQE
	n, err := r.Wait(c[:], int64(5*time.Second))
	if err != nil || n != 1 {
		t.Fatalf("Wait: n=%d err=%v", n, err)
	}
	return c[0]
}

func TestNewRejectsBadSizes(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"zero", Options{}, "ring size 0"},
		{"too large", Options{Entries: MaxEntries + 1}, "too large"},
		{"cq smaller than sq", Options{Entries: 64, CQEntries: 32}, "smaller than SQ"},
		{"cq too large", Options{Entries: 64, CQEntries: MaxCQEntries + 1}, "CQ size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := New(tt.o)
			if err == nil {
				r.Close()
				t.Fatalf("New(%+v) succeeded", tt.o)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestSizesRoundedUp(t *testing.T) {
	r := newRing(t, Options{Entries: 5, CQEntries: 100})
	if r.SQEntries() != 8 || r.CQEntries() != 128 {
		t.Fatalf("got SQ %d CQ %d, want 8 and 128", r.SQEntries(), r.CQEntries())
	}
}

func TestNopBatchUserData(t *testing.T) {
	for _, o := range []Options{
		{Entries: 32},
		{Entries: 32, SQE128: true, CQE32: true},
		{Entries: 32, CoopTaskrun: true},
	} {
		r := newRing(t, o)
		for i := range 32 {
			s := r.GetSQE()
			s.PrepNop()
			s.SetUserData(uint64(i) | 0xdead<<48)
		}
		if s := r.GetSQE(); s != nil {
			t.Fatal("GetSQE on a full SQ returned an entry")
		}
		n, err := r.SubmitAndWait(32)
		if err != nil || n != 32 {
			t.Fatalf("SubmitAndWait: %d %v", n, err)
		}
		cqes := make([]CQE, 64)
		got := r.Reap(cqes)
		if got != 32 {
			t.Fatalf("reaped %d, want 32", got)
		}
		seen := map[uint64]bool{}
		for _, c := range cqes[:got] {
			if c.Res != 0 || c.UserData>>48 != 0xdead {
				t.Fatalf("bad cqe %+v", c)
			}
			seen[c.UserData&0xffff] = true
		}
		if len(seen) != 32 {
			t.Fatalf("user data not unique: %d", len(seen))
		}
		if r.Reap(cqes) != 0 {
			t.Fatal("reaped again after draining")
		}
	}
}

func TestSingleIssuerDeferTaskrun(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r := newRing(t, Options{Entries: 8, SingleIssuer: true, DeferTaskrun: true})
	if r.Flags()&SetupDeferTaskrun == 0 || r.Flags()&SetupSingleIssuer == 0 {
		t.Fatalf("kernel 6.x should grant DEFER_TASKRUN; flags %#x", r.Flags())
	}
	s := r.GetSQE()
	s.PrepNop()
	s.SetUserData(7)
	if c := one(t, r); c.UserData != 7 {
		t.Fatalf("user data %d", c.UserData)
	}
	// Another thread may not submit to a SINGLE_ISSUER ring.
	errc := make(chan error)
	go func() {
		runtime.LockOSThread()
		s := r.GetSQE()
		s.PrepNop()
		_, err := r.Submit()
		errc <- err
	}()
	if err := <-errc; !errors.Is(err, unix.EEXIST) {
		t.Fatalf("submit from another thread: %v, want EEXIST", err)
	}
}

func tempFile(t testing.TB, size int) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestReadWrite(t *testing.T) {
	r := newRing(t, Options{Entries: 8})
	f := tempFile(t, 1<<16)
	fd := int(f.Fd())
	w := bytes.Repeat([]byte("dst!"), 1024)
	s := r.GetSQE()
	s.PrepWrite(fd, w, 4096, 0)
	if c := one(t, r); c.Res != 4096 {
		t.Fatalf("write res %d", c.Res)
	}
	got := make([]byte, 4096)
	s = r.GetSQE()
	s.PrepRead(fd, got, 4096)
	if c := one(t, r); c.Res != 4096 || !bytes.Equal(got, w) {
		t.Fatalf("read res %d, data equal %v", c.Res, bytes.Equal(got, w))
	}
}

func TestReadvWritevDsync(t *testing.T) {
	r := newRing(t, Options{Entries: 8})
	f := tempFile(t, 1<<16)
	fd := int(f.Fd())
	a, b := bytes.Repeat([]byte{1}, 512), bytes.Repeat([]byte{2}, 1024)
	iov := make([]unix.Iovec, 2)
	iov[0].Base, iov[1].Base = &a[0], &b[0]
	iov[0].SetLen(len(a))
	iov[1].SetLen(len(b))
	s := r.GetSQE()
	s.PrepWritev(fd, iov, 100, unix.RWF_DSYNC)
	if c := one(t, r); c.Res != 1536 {
		t.Fatalf("writev res %d (%v)", c.Res, c.Err())
	}
	x, y := make([]byte, 1000), make([]byte, 536)
	iov[0].Base, iov[1].Base = &x[0], &y[0]
	iov[0].SetLen(len(x))
	iov[1].SetLen(len(y))
	s = r.GetSQE()
	s.PrepReadv(fd, iov, 100, 0)
	if c := one(t, r); c.Res != 1536 {
		t.Fatalf("readv res %d", c.Res)
	}
	if !bytes.Equal(append(x, y...), append(a, b...)) {
		t.Fatal("readv data differs from writev data")
	}
}

func TestFixedBuffersAndFiles(t *testing.T) {
	r := newRing(t, Options{Entries: 8})
	f := tempFile(t, 1<<16)
	buf, err := AlignedBuffer(8192)
	if err != nil {
		t.Fatal(err)
	}
	defer FreeBuffer(buf)
	if err := r.RegisterBuffers([][]byte{buf}); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterFiles([]int32{int32(f.Fd())}); err != nil {
		t.Fatal(err)
	}
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	s := r.GetSQE()
	s.PrepWriteFixed(0, buf[:4096], 8192, 0, 0)
	s.SetFlags(SQEFixedFile)
	if c := one(t, r); c.Res != 4096 {
		t.Fatalf("write fixed: %d %v", c.Res, c.Err())
	}
	s = r.GetSQE()
	s.PrepReadFixed(int(f.Fd()), buf[4096:], 8192, 0)
	if c := one(t, r); c.Res != 4096 {
		t.Fatalf("read fixed: %d %v", c.Res, c.Err())
	}
	if !bytes.Equal(buf[:4096], buf[4096:]) {
		t.Fatal("fixed read differs from fixed write")
	}
	// A buffer outside the registered region is refused.
	other := make([]byte, 4096)
	s = r.GetSQE()
	s.PrepReadFixed(int(f.Fd()), other, 0, 0)
	if c := one(t, r); c.Res != -int32(unix.EFAULT) {
		t.Fatalf("read fixed outside registration: %d, want EFAULT", c.Res)
	}
	if err := r.UnregisterBuffers(); err != nil {
		t.Fatal(err)
	}
	if err := r.UnregisterFiles(); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterBuffers(nil); err == nil {
		t.Fatal("registering no buffers succeeded")
	}
}

func TestODirect(t *testing.T) {
	r := newRing(t, Options{Entries: 8})
	path := filepath.Join(t.TempDir(), "direct")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_DIRECT, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	fd := int(f.Fd())
	buf, _ := AlignedBuffer(8192)
	defer FreeBuffer(buf)
	for i := range buf[:4096] {
		buf[i] = byte(i)
	}
	if err := CheckDirect(buf[:4096], 4096, 512); err != nil {
		t.Fatal(err)
	}
	s := r.GetSQE()
	s.PrepWrite(fd, buf[:4096], 4096, unix.RWF_DSYNC)
	if c := one(t, r); c.Res != 4096 {
		t.Fatalf("O_DIRECT write: %d %v", c.Res, c.Err())
	}
	s = r.GetSQE()
	s.PrepRead(fd, buf[4096:], 4096)
	if c := one(t, r); c.Res != 4096 || !bytes.Equal(buf[:4096], buf[4096:]) {
		t.Fatalf("O_DIRECT read: %d", c.Res)
	}
	// Unaligned buffer: the kernel refuses with EINVAL, CheckDirect says why.
	bad := buf[1 : 1+4096]
	if err := CheckDirect(bad, 0, 512); err == nil || !strings.Contains(err.Error(), "not aligned") {
		t.Fatalf("CheckDirect on unaligned buffer: %v", err)
	}
	if err := CheckDirect(buf[:100], 0, 512); err == nil || !strings.Contains(err.Error(), "length") {
		t.Fatalf("CheckDirect on short length: %v", err)
	}
	if err := CheckDirect(buf[:512], 3, 512); err == nil || !strings.Contains(err.Error(), "offset") {
		t.Fatalf("CheckDirect on odd offset: %v", err)
	}
	// An unaligned file offset is refused by the kernel with EINVAL (memory
	// alignment rules depend on the device's DMA alignment, so the offset
	// is the portable case).
	s = r.GetSQE()
	s.PrepRead(fd, buf[:4096], 1)
	if c := one(t, r); c.Res != -int32(unix.EINVAL) {
		t.Fatalf("unaligned O_DIRECT read: %d, want EINVAL", c.Res)
	}
}

func TestFsyncAndFallocate(t *testing.T) {
	r := newRing(t, Options{Entries: 8})
	f := tempFile(t, 0)
	fd := int(f.Fd())
	data := bytes.Repeat([]byte{0xab}, 64<<10)
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	s := r.GetSQE()
	s.PrepFsync(fd, FsyncDatasync)
	if c := one(t, r); c.Res != 0 {
		t.Fatalf("fdatasync: %v", c.Err())
	}
	// Punch a hole in [16K, 32K): reads as zero, and SEEK_HOLE finds it.
	s = r.GetSQE()
	s.PrepFallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 16<<10, 16<<10)
	if c := one(t, r); c.Res != 0 {
		t.Fatalf("punch hole: %v", c.Err())
	}
	hole, err := unix.Seek(fd, 0, unix.SEEK_HOLE)
	if err != nil || hole != 16<<10 {
		t.Fatalf("SEEK_HOLE = %d, %v; want 16384", hole, err)
	}
	// Zero [40K, 44K) in place.
	s = r.GetSQE()
	s.PrepFallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 40<<10, 4<<10)
	if c := one(t, r); c.Res != 0 {
		t.Fatalf("zero range: %v", c.Err())
	}
	got := make([]byte, len(data))
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(data)
	clear(want[16<<10 : 32<<10])
	clear(want[40<<10 : 44<<10])
	if !bytes.Equal(got, want) {
		t.Fatal("file contents after punch/zero differ from the model")
	}
	if st, _ := f.Stat(); st.Size() != int64(len(data)) {
		t.Fatalf("KEEP_SIZE changed the size to %d", st.Size())
	}
}

func TestLinkedSQEs(t *testing.T) {
	r := newRing(t, Options{Entries: 8})
	f := tempFile(t, 8192)
	fd := int(f.Fd())
	w := bytes.Repeat([]byte{9}, 4096)
	// write -> fsync, linked: both succeed in order.
	s := r.GetSQE()
	s.PrepWrite(fd, w, 0, 0)
	s.SetFlags(SQEIOLink)
	s.SetUserData(1)
	s = r.GetSQE()
	s.PrepFsync(fd, 0)
	s.SetUserData(2)
	if _, err := r.SubmitAndWait(2); err != nil {
		t.Fatal(err)
	}
	cq := make([]CQE, 4)
	if n := r.Reap(cq); n != 2 || cq[0].UserData != 1 || cq[1].UserData != 2 || cq[0].Res != 4096 || cq[1].Res != 0 {
		t.Fatalf("linked write+fsync: %+v", cq[:n])
	}
	// A failing head cancels the rest of the chain.
	s = r.GetSQE()
	s.PrepRead(-1, w, 0)
	s.SetFlags(SQEIOLink)
	s.SetUserData(3)
	s = r.GetSQE()
	s.PrepNop()
	s.SetUserData(4)
	if _, err := r.SubmitAndWait(2); err != nil {
		t.Fatal(err)
	}
	n := r.Reap(cq)
	res := map[uint64]int32{}
	for _, c := range cq[:n] {
		res[c.UserData] = c.Res
	}
	if res[3] != -int32(unix.EBADF) || res[4] != -int32(unix.ECANCELED) {
		t.Fatalf("failed chain: %v, want EBADF then ECANCELED", res)
	}
}

func TestClosedFd(t *testing.T) {
	r := newRing(t, Options{Entries: 4})
	f := tempFile(t, 4096)
	fd := int(f.Fd())
	f.Close()
	s := r.GetSQE()
	s.PrepRead(fd, make([]byte, 16), 0)
	c := one(t, r)
	if !errors.Is(c.Err(), unix.EBADF) {
		t.Fatalf("read on closed fd: %v, want EBADF", c.Err())
	}
}

func TestEventfdWakeup(t *testing.T) {
	r := newRing(t, Options{Entries: 4})
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	val := new(uint64)
	s := r.GetSQE()
	s.PrepReadEventfd(efd, val)
	s.SetUserData(42)
	if _, err := r.Submit(); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		var one = []byte{3, 0, 0, 0, 0, 0, 0, 0}
		unix.Write(efd, one)
	}()
	c := one(t, r)
	if c.UserData != 42 || c.Res != 8 || *val != 3 {
		t.Fatalf("eventfd wake: %+v val %d", c, *val)
	}
}

func TestTimeout(t *testing.T) {
	r := newRing(t, Options{Entries: 4})
	ts := unix.NsecToTimespec(int64(30 * time.Millisecond))
	s := r.GetSQE()
	s.PrepTimeout(&ts, 0, 0)
	start := time.Now()
	c := one(t, r)
	if !errors.Is(c.Err(), unix.ETIME) {
		t.Fatalf("timeout result %v, want ETIME", c.Err())
	}
	if el := time.Since(start); el < 25*time.Millisecond {
		t.Fatalf("timeout fired after %v", el)
	}
	// Wait with a timeout and nothing in flight returns ErrTimeout.
	cq := make([]CQE, 1)
	n, err := r.Wait(cq, int64(20*time.Millisecond))
	if n != 0 || !errors.Is(err, ErrTimeout) {
		t.Fatalf("Wait on an idle ring: %d %v", n, err)
	}
}

// TestEINTR interrupts a blocked wait with signals many times; the wait must
// neither fail nor return early.
func TestEINTR(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r := newRing(t, Options{Entries: 4})
	tid := unix.Gettid()
	pid := unix.Getpid()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			unix.Tgkill(pid, tid, syscall.SIGURG) // Go ignores SIGURG beyond preemption
			time.Sleep(time.Millisecond)
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	ts := unix.NsecToTimespec(int64(100 * time.Millisecond))
	s := r.GetSQE()
	s.PrepTimeout(&ts, 0, 0)
	s.SetUserData(5)
	start := time.Now()
	c := one(t, r)
	if c.UserData != 5 || time.Since(start) < 90*time.Millisecond {
		t.Fatalf("wait returned %+v after %v", c, time.Since(start))
	}
	cq := make([]CQE, 1)
	start = time.Now()
	if _, err := r.Wait(cq, int64(60*time.Millisecond)); !errors.Is(err, ErrTimeout) {
		t.Fatalf("interrupted timed wait: %v", err)
	}
	if el := time.Since(start); el < 55*time.Millisecond || el > 2*time.Second {
		t.Fatalf("timed wait took %v, want ~60ms", el)
	}
}

// TestCQOverflow submits more requests than the CQ holds without reaping:
// the kernel parks the excess (NODROP) and Reap gets every completion.
func TestCQOverflow(t *testing.T) {
	r := newRing(t, Options{Entries: 4, CQEntries: 8})
	const total = 40
	for i := 0; i < total; i += 4 {
		for j := range 4 {
			s := r.GetSQE()
			if s == nil {
				t.Fatal("SQ full after submit")
			}
			s.PrepNop()
			s.SetUserData(uint64(i + j))
		}
		if _, err := r.Submit(); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	seen := make(map[uint64]bool)
	cq := make([]CQE, 3)
	for len(seen) < total {
		n, err := r.Wait(cq, int64(time.Second))
		if err != nil {
			t.Fatalf("after %d completions: %v", len(seen), err)
		}
		for _, c := range cq[:n] {
			if seen[c.UserData] {
				t.Fatalf("completion %d twice", c.UserData)
			}
			seen[c.UserData] = true
		}
	}
	if r.Overflowed() != 0 {
		t.Fatalf("kernel dropped %d completions", r.Overflowed())
	}
}

// TestURingCmdGetsockopt drives the URING_CMD path through a socket, which
// the host kernel supports without ublk.
func TestURingCmdGetsockopt(t *testing.T) {
	for _, o := range []Options{{Entries: 4}, {Entries: 4, SQE128: true, CQE32: true}} {
		r := newRing(t, o)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		raw, _ := ln.(*net.TCPListener).SyscallConn()
		var fd int
		raw.Control(func(f uintptr) { fd = int(f) })
		optval := make([]byte, 4)
		s := r.GetSQE()
		s.PrepGetsockopt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN, optval)
		c := one(t, r)
		if c.Res != 4 || *(*int32)(unsafe.Pointer(&optval[0])) != 1 {
			t.Fatalf("getsockopt(SO_ACCEPTCONN) via URING_CMD: res %d (%v) val %v", c.Res, c.Err(), optval)
		}
		// The same command on a regular file is refused.
		f := tempFile(t, 0)
		s = r.GetSQE()
		s.PrepGetsockopt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_TYPE, optval)
		if c := one(t, r); c.Res >= 0 {
			t.Fatalf("URING_CMD on a regular file succeeded: %d", c.Res)
		}
	}
}

func TestCmd80(t *testing.T) {
	r := newRing(t, Options{Entries: 2, SQE128: true})
	s := r.GetSQE()
	cmd := r.Cmd80(s)
	cmd[79] = 1 // must be inside the 128-byte entry
	s2 := r.GetSQE()
	if uintptr(unsafe.Pointer(s2))-uintptr(unsafe.Pointer(s)) != 128 {
		t.Fatal("SQE128 entries are not 128 bytes apart")
	}
	r64 := newRing(t, Options{Entries: 2})
	defer func() {
		if recover() == nil {
			t.Fatal("Cmd80 on a 64-byte ring did not panic")
		}
	}()
	r64.Cmd80(r64.GetSQE())
}

func TestClosedRing(t *testing.T) {
	r, err := New(Options{Entries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := r.Submit(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit on closed ring: %v", err)
	}
	if err := r.RegisterFiles([]int32{0}); !errors.Is(err, ErrClosed) {
		t.Fatalf("RegisterFiles on closed ring: %v", err)
	}
	if n := r.Reap(make([]CQE, 1)); n != 0 {
		t.Fatal("Reap on closed ring")
	}
}

func TestRoundPow2(t *testing.T) {
	for in, want := range map[uint32]uint32{0: 1, 1: 1, 2: 2, 3: 4, 4096: 4096, 4097: 8192} {
		if got := RoundPow2(in); got != want {
			t.Errorf("RoundPow2(%d) = %d, want %d", in, got, want)
		}
	}
}

// TestRandomIOAgainstModel writes random blocks through the ring, mixing
// batches, and compares the file with an in-memory model.
func TestRandomIOAgainstModel(t *testing.T) {
	r := newRing(t, Options{Entries: 16})
	const size = 256 << 10
	f := tempFile(t, size)
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
	}
	cq := make([]CQE, 16)
	for round := range 50 {
		used := map[uint64]bool{}
		n := 1 + rng.IntN(16)
		for i := range n {
			blk := uint64(rng.IntN(size / 4096))
			if used[blk] {
				continue // overlapping writes in one batch have no order
			}
			used[blk] = true
			for j := range bufs[i] {
				bufs[i][j] = byte(rng.Uint32())
			}
			copy(model[blk*4096:], bufs[i])
			s := r.GetSQE()
			s.PrepWrite(int(f.Fd()), bufs[i], blk*4096, 0)
			s.SetUserData(uint64(round))
		}
		want := uint32(len(used))
		if _, err := r.SubmitAndWait(want); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < int(want); {
			k := r.Reap(cq)
			for _, c := range cq[:k] {
				if c.Res != 4096 {
					t.Fatalf("write: %d", c.Res)
				}
			}
			got += k
		}
	}
	disk := make([]byte, size)
	if _, err := f.ReadAt(disk, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk, model) {
		t.Fatal("file differs from the model")
	}
}
