//go:build linux

package backend

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFaultEIO: a request matching an EIO rule fails with EIO through the
// ring path (Prep makes a NOP, Result asks for Sync) and is not performed;
// other ops and ranges are untouched.
func TestFaultEIO(t *testing.T) {
	const size = 64 << 10
	path := tempFile(t, size)
	var lines []string
	fl := &Faults{
		EIO: []EIORule{{Op: OpWrite, Off: 8192, Len: 4096}, {Op: OpFlush}},
		Log: func(s string) { lines = append(lines, s) },
	}
	f := openFile(t, path, Options{Faults: fl})
	if !f.Faulty() || !f.NeedsSync(OpRead, 0) {
		t.Fatal("a File with faults must take the sync path")
	}
	r := newTestRing(t)
	buf := alignedBuf(t, 8192)
	for i := range buf {
		buf[i] = 0xee
	}
	before := readBack(t, path, size)

	step, err := r.do(f, OpWrite, 0, 4096, buf, 8192) // overlaps [8192, 12288)
	if step != StepSync || !errors.Is(err, syscall.EIO) {
		t.Fatalf("write over the EIO range: step %v, %v; want sync, EIO", step, err)
	}
	if !bytes.Equal(readBack(t, path, size), before) {
		t.Fatal("the failed write changed the file")
	}
	r.must(f, OpWrite, 0, 12288, buf, 4096) // just after the range
	r.must(f, OpRead, 0, 8192, buf, 4096)   // reads are not in the rule
	if _, err := r.do(f, OpFlush, 0, 0, nil, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush: %v, want EIO", err)
	}
	if st := fl.Stats(); st.EIO != 2 {
		t.Errorf("stats %+v, want 2 EIO", st)
	}
	if len(lines) != 2 || !strings.Contains(lines[0], "EIO on write of 8192 bytes at offset 4096 (rule write@8192+4096)") {
		t.Errorf("log %q", lines)
	}
	if _, err := Open(path, Options{Faults: fl}); err == nil {
		t.Error("one Faults accepted by two Files")
	}
}

func TestFaultLatency(t *testing.T) {
	path := tempFile(t, 16<<10)
	fl := &Faults{Latency: 30 * time.Millisecond}
	f := openFile(t, path, Options{Faults: fl})
	buf := alignedBuf(t, 4096)
	start := time.Now()
	if err := f.Sync(OpRead, 0, 0, buf, 4096); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 30*time.Millisecond {
		t.Errorf("read took %v with 30ms latency", el)
	}
	if fl.Stats().Delayed != 1 {
		t.Errorf("stats %+v", fl.Stats())
	}
}

// TestFaultCrashModel runs random writes (some FUA), flushes, discards
// and write-zeroes, then crashes: every block must hold its last durable
// content or its latest one, a block whose latest content was made durable
// (FUA or a later flush) must hold it, both outcomes must occur, and the
// same seed must give the same file.
func TestFaultCrashModel(t *testing.T) {
	const bs, blocks = 4096, 64
	run := func(seed uint64) ([]byte, CrashResult) {
		path := tempFile(t, bs*blocks)
		fl := &Faults{CrashModel: true, Seed: seed}
		f := openFile(t, path, Options{Faults: fl})
		if f.LogicalBlockSize() > bs {
			t.Skipf("logical block %d", f.LogicalBlockSize())
		}
		lbs := int(f.LogicalBlockSize())
		img := readBack(t, path, bs*blocks)
		latest := append([]byte(nil), img...)
		durable := append([]byte(nil), img...) // what a crash may not lose
		settled := make([]bool, blocks*bs/lbs) // latest == durable, per logical block
		for i := range settled {
			settled[i] = true
		}
		rng := rand.New(rand.NewPCG(seed, 1))
		buf := alignedBuf(t, 4*bs)
		for n := 0; n < 400; n++ {
			off := rng.IntN(blocks-4) * bs
			length := (1 + rng.IntN(4)) * bs
			switch k := rng.IntN(10); {
			case k == 0:
				if err := f.Sync(OpFlush, 0, 0, nil, 0); err != nil {
					t.Fatal(err)
				}
				copy(durable, latest)
				for i := range settled {
					settled[i] = true
				}
				continue
			case k <= 6:
				for i := 0; i < length; i += 8 {
					binary.LittleEndian.PutUint64(buf[i:], uint64(n)<<32|uint64(off+i))
				}
				var flags Flags
				if k == 6 {
					flags = FlagFUA
				}
				if err := f.Sync(OpWrite, flags, uint64(off), buf, uint32(length)); err != nil {
					t.Fatal(err)
				}
				copy(latest[off:], buf[:length])
				if flags&FlagFUA != 0 {
					copy(durable[off:off+length], buf[:length])
				}
				for b := off / lbs; b < (off+length)/lbs; b++ {
					settled[b] = flags&FlagFUA != 0
				}
			default:
				op := OpWriteZeroes
				if k == 9 && f.Caps().Discard {
					op = OpDiscard
				}
				if err := f.Sync(op, 0, uint64(off), nil, uint32(length)); err != nil {
					t.Fatal(err)
				}
				clear(latest[off : off+length])
				for b := off / lbs; b < (off+length)/lbs; b++ {
					settled[b] = false
				}
			}
		}
		f.Close()
		res, err := fl.Crash()
		if err != nil {
			t.Fatal(err)
		}
		got := readBack(t, path, bs*blocks)
		for b := range settled {
			g, l, d := got[b*lbs:(b+1)*lbs], latest[b*lbs:(b+1)*lbs], durable[b*lbs:(b+1)*lbs]
			if settled[b] && !bytes.Equal(g, l) {
				t.Fatalf("seed %d: block %d was made durable and the crash lost it", seed, b)
			}
			if !bytes.Equal(g, l) && !bytes.Equal(g, d) {
				t.Fatalf("seed %d: block %d holds neither its durable nor its latest content", seed, b)
			}
		}
		if res.Reverted == 0 || res.Kept == 0 {
			t.Fatalf("seed %d: crash %+v: want both reverted and kept blocks", seed, res)
		}
		return got, res
	}
	for seed := uint64(1); seed <= 5; seed++ {
		a, ra := run(seed)
		b, rb := run(seed)
		if !bytes.Equal(a, b) || fmt.Sprint(ra) != fmt.Sprint(rb) {
			t.Fatalf("seed %d: two runs crashed differently", seed)
		}
		t.Logf("seed %d: %d blocks reverted, %d kept", seed, ra.Reverted, ra.Kept)
	}
}
