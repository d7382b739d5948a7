//go:build linux

package backend

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestPropertyFile and TestPropertyLoop run random sequences of reads,
// writes, discards, write-zeroes and flushes through a Worker against an
// in-memory model. Each batch puts up to 48 requests in flight at once on
// non-overlapping ranges (requests in flight have no order among
// themselves); reads are checked against the model as of the batch start,
// and the whole content is compared at the end.
func TestPropertyFile(t *testing.T) {
	const size = 32 << 20
	path := tempFile(t, size)
	runProperty(t, openFile(t, path, Options{}), path, 1)
}

func TestPropertyLoop(t *testing.T) {
	const size = 32 << 20
	dev, _ := loopDevice(t, size)
	runProperty(t, openFile(t, dev, Options{}), dev, 2)
}

func TestPropertyBuffered(t *testing.T) {
	const size = 8 << 20
	path := tempFile(t, size)
	runProperty(t, openFile(t, path, Options{Buffered: true}), path, 3)
}

type propReq struct {
	Request
	data []byte // what a write wrote, what a read must see
}

func runProperty(t *testing.T, f *File, path string, seed uint64) {
	const (
		batches  = 150
		maxBatch = 48
		maxLen   = 256 << 10
	)
	size := f.Size()
	lbs := uint64(f.LogicalBlockSize())
	// Discards on block devices leave undefined contents in partial
	// granules; the loop driver zeroes whole granules, so stay aligned.
	discardAlign := lbs
	if f.IsBlockDevice() {
		discardAlign = uint64(max(f.Caps().DiscardGranularity, f.LogicalBlockSize()))
	}
	model := make([]byte, size)
	pattern(model, 0)
	w := newWorker(t, 32)
	slab := alignedBuf(t, maxBatch*maxLen)
	rng := rand.New(rand.NewPCG(seed, 0xd57))
	var chachaSeed [32]byte
	chachaSeed[0] = byte(seed)
	fill := rand.NewChaCha8(chachaSeed)
	done := make(chan *propReq, maxBatch)
	reqs := make([]*propReq, maxBatch)
	for i := range reqs {
		reqs[i] = &propReq{}
		reqs[i].Ctx = reqs[i]
		reqs[i].File = f
		reqs[i].Buf = slab[i*maxLen : (i+1)*maxLen]
		reqs[i].Done = func(r *Request, err error) {
			if err != nil {
				t.Errorf("%s %d@%d flags %#x: %v", r.Op, r.Length, r.Off, r.Flags, err)
			}
			done <- r.Ctx.(*propReq)
		}
	}
	counts := map[string]int{}
	type span struct{ lo, hi uint64 }
	for b := range batches {
		n := 1 + rng.IntN(maxBatch)
		var used []span
		overlaps := func(lo, hi uint64) bool {
			for _, s := range used {
				if lo < s.hi && s.lo < hi {
					return true
				}
			}
			return false
		}
		var batch []*propReq
		for _, r := range reqs[:n] {
			op := []Op{OpRead, OpRead, OpWrite, OpWrite, OpWrite, OpDiscard, OpWriteZeroes, OpFlush}[rng.IntN(8)]
			var flags Flags
			align := lbs
			if op == OpDiscard {
				align = discardAlign
			}
			length := (1 + rng.Uint64N(maxLen/align)) * align
			off := rng.Uint64N((size-length)/align+1) * align
			if op != OpFlush && overlaps(off, off+length) {
				continue
			}
			switch op {
			case OpWrite:
				if rng.IntN(4) == 0 {
					flags = FlagFUA
				}
				fill.Read(r.Buf[:length])
				r.data = r.Buf[:length]
			case OpRead:
				r.data = slices.Clone(model[off : off+length])
				clear(r.Buf[:length])
			case OpDiscard:
				if rng.IntN(8) == 0 {
					flags = FlagFUA
				}
			case OpWriteZeroes:
				flags = []Flags{0, FlagNoUnmap, FlagFUA, FlagFUA | FlagNoUnmap}[rng.IntN(4)]
			case OpFlush:
				off, length = 0, 0
			}
			if op != OpFlush {
				used = append(used, span{off, off + length})
			}
			r.Op, r.Flags, r.Off, r.Length = op, flags, off, uint32(length)
			counts[op.String()]++
			batch = append(batch, r)
		}
		for _, r := range batch {
			if err := w.Submit(&r.Request); err != nil {
				t.Fatal(err)
			}
		}
		for range batch {
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("batch %d: completions missing", b)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		for _, r := range batch {
			lo, hi := r.Off, r.Off+uint64(r.Length)
			switch r.Op {
			case OpRead:
				if !bytes.Equal(r.Buf[:r.Length], r.data) {
					t.Fatalf("batch %d: read %d@%d differs from the model", b, r.Length, r.Off)
				}
			case OpWrite:
				copy(model[lo:hi], r.data)
			case OpDiscard, OpWriteZeroes:
				clear(model[lo:hi])
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got := readBack(t, path, int(size))
	if !bytes.Equal(got, model) {
		i := 0
		for got[i] == model[i] {
			i++
		}
		t.Fatalf("content differs from the model first at byte %d", i)
	}
	t.Logf("%s: %s", f, fmt.Sprint(counts))
}
