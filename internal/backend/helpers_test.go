//go:build linux

package backend

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dst-dev/dst/internal/uring"
	"golang.org/x/sys/unix"
)

// tempFile creates a file of size bytes filled with a pattern (so it is
// allocated, not sparse) in a test directory on the root filesystem.
func tempFile(t testing.TB, size int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "backend.img")
	fillFile(t, path, size)
	return path
}

func fillFile(t testing.TB, path string, size int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for off := 0; off < size; off += len(chunk) {
		n := min(len(chunk), size-off)
		pattern(chunk[:n], uint64(off))
		if _, err := f.WriteAt(chunk[:n], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// pattern fills b with bytes that depend on their file offset.
func pattern(b []byte, off uint64) {
	for i := range b {
		o := off + uint64(i)
		b[i] = byte(o>>9) ^ byte(o*7) ^ 0x5a
	}
}

func openFile(t testing.TB, path string, o Options) *File {
	t.Helper()
	f, err := Open(path, o)
	if err != nil {
		t.Fatalf("Open(%s, %+v): %v", path, o, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// needLoop skips unless loop devices can be created (root, loop-control,
// losetup).
func needLoop(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping loop-device test: needs root to run losetup")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("skipping loop-device test: /dev/loop-control is missing (no loop driver)")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("skipping loop-device test: losetup not found")
	}
}

// loopDevice attaches a loop device with direct I/O to a new backing file
// of size bytes (filled with pattern) and detaches it in Cleanup. It
// returns the device path and the backing file path.
func loopDevice(t testing.TB, size int) (dev, backing string) {
	t.Helper()
	needLoop(t)
	backing = tempFile(t, size)
	out, err := exec.Command("losetup", "--find", "--show", "--direct-io=on", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup --find --show --direct-io=on %s: %v: %s", backing, err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		// The kernel may hold the device briefly after the last close.
		var out []byte
		var err error
		for range 50 {
			if out, err = exec.Command("losetup", "-d", dev).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("losetup -d %s: %v: %s", dev, err, out)
	})
	return dev, backing
}

// testRing is a small ring for driving Prep/Result by hand.
type testRing struct {
	t    testing.TB
	ring *uring.Ring
}

func newTestRing(t testing.TB) *testRing {
	t.Helper()
	r, err := uring.New(uring.Options{Entries: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &testRing{t: t, ring: r}
}

// do runs one request through Prep, the ring and Result, following StepSync
// with Sync as a real caller would. It returns the final error and the step
// Result chose.
func (r *testRing) do(f *File, op Op, flags Flags, off uint64, buf []byte, length uint32) (Step, error) {
	r.t.Helper()
	if err := f.Check(op, flags, off, length); err != nil {
		return StepDone, err
	}
	sqe := r.ring.GetSQE()
	f.Prep(sqe, op, flags, off, buf, length)
	sqe.SetUserData(0xfeed)
	var cq [1]uring.CQE
	n, err := r.ring.Wait(cq[:], int64(10*time.Second))
	if err != nil || n != 1 || cq[0].UserData != 0xfeed {
		r.t.Fatalf("%s: wait: n=%d err=%v cqe=%+v", op, n, err, cq[0])
	}
	step, err := f.Result(op, flags, off, length, cq[0].Res)
	if step == StepSync {
		err = f.Sync(op, flags, off, buf, length)
	}
	return step, err
}

func (r *testRing) must(f *File, op Op, flags Flags, off uint64, buf []byte, length uint32) Step {
	r.t.Helper()
	step, err := r.do(f, op, flags, off, buf, length)
	if err != nil {
		r.t.Fatalf("%s %d@%d flags %#x: %v", op, length, off, flags, err)
	}
	return step
}

func alignedBuf(t testing.TB, size int) []byte {
	t.Helper()
	b, err := uring.AlignedBuffer(size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uring.FreeBuffer(b) })
	return b
}

// readBack reads the whole content of path with a plain buffered fd.
func readBack(t testing.TB, path string, size int) []byte {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if st, _ := os.Stat(path); st.Mode()&os.ModeDevice != 0 {
		// Drop stale page cache of a block device we wrote with O_DIRECT.
		unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKFLSBUF, 0)
	}
	b := make([]byte, size)
	for off := 0; off < size; {
		n, err := unix.Pread(fd, b[off:], int64(off))
		if err != nil || n == 0 {
			t.Fatalf("read back %s at %d: %d %v", path, off, n, err)
		}
		off += n
	}
	return b
}

func isZero(b []byte) bool { return len(bytes.TrimLeft(b, "\x00")) == 0 }
