//go:build linux

package backend

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Storage faults
//
// A File opened with Options.Faults injects storage faults, for tests and
// for the hidden debugging flags of dst export: EIO on chosen ops and
// offsets, added latency, and a crash model that keeps only what was made
// durable. The normal path pays one nil check in NeedsSync, Prep, Result
// and Sync: a File with faults sends every request down the synchronous
// path (NeedsSync is true, Prep makes a NOP, Result says StepSync), where
// Sync applies the faults around the real operation.

// AnyOp in an EIORule matches every operation.
const AnyOp Op = 255

// EIORule selects the requests that fail with EIO.
type EIORule struct {
	// Op is the operation that fails (AnyOp: every one).
	Op Op
	// Off and Len are a byte range: a request overlapping it fails. Len 0
	// matches every offset; a FLUSH (which has no range) matches only a
	// rule with Len 0.
	Off, Len uint64
}

func (r EIORule) String() string {
	op := "any"
	if r.Op != AnyOp {
		op = r.Op.String()
	}
	if r.Len == 0 {
		return op
	}
	return fmt.Sprintf("%s@%d+%d", op, r.Off, r.Len)
}

func (r EIORule) match(op Op, off uint64, length uint32) bool {
	if r.Op != AnyOp && r.Op != op {
		return false
	}
	if r.Len == 0 {
		return true
	}
	if op == OpFlush {
		return false
	}
	return off < r.Off+r.Len && r.Off < off+uint64(length)
}

// Faults are the storage faults of one File. Set the exported fields, then
// pass it in Options.Faults; do not change them afterwards. One Faults
// serves one File.
type Faults struct {
	// EIO: a request matching any rule fails with EIO without being
	// performed (a disk error: the exporter answers EIO and the client
	// does not retry it).
	EIO []EIORule
	// Latency is added before every request.
	Latency time.Duration
	// CrashModel keeps the durability model that Crash needs. It serialises the
	// requests (one at a time) and reads the old contents of every range
	// before a write overwrites it: for tests.
	CrashModel bool
	// Seed drives Crash's choices.
	Seed uint64
	// Log, if set, receives one line per injected EIO and per Crash.
	Log func(string)

	mu       sync.Mutex
	file     *File
	rfd      *os.File          // buffered reads of old contents (CrashModel)
	volatile map[uint64][]byte // block index → its content when it was last durable
	crashed  bool              // Crash happened: every request fails with EIO
	stats    FaultStats
}

// FaultStats counts what Faults did.
type FaultStats struct {
	EIO      int // requests failed with EIO
	Delayed  int // requests delayed by Latency
	Tracked  int // blocks written and not yet durable (CrashModel)
	Flushes  int // successful flushes, which made every tracked block durable
	Reverted int // blocks the last Crash put back to their durable content
	Kept     int // not-durable blocks the last Crash left with their new content
}

// CrashResult is what Crash did.
type CrashResult struct {
	Reverted, Kept int
	// RevertedBlocks lists the byte offsets of the reverted blocks.
	RevertedBlocks []uint64
}

func (fl *Faults) logf(format string, args ...any) {
	if fl.Log != nil {
		fl.Log(fmt.Sprintf(format, args...))
	}
}

// bind attaches fl to f (at Open).
func (fl *Faults) bind(f *File) error {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.file != nil {
		return fmt.Errorf("backend: faults for %s are already used by %s", f.path, fl.file.path)
	}
	fl.file = f
	if fl.CrashModel {
		rf, err := os.Open(f.path)
		if err != nil {
			return fmt.Errorf("backend: crash model of %s: %w", f.path, err)
		}
		fl.rfd = rf
		fl.volatile = map[uint64][]byte{}
	}
	return nil
}

// release closes what bind opened (at Close). Crash still works after it.
func (fl *Faults) release() {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.rfd != nil {
		fl.rfd.Close()
		fl.rfd = nil
	}
}

// Stats returns the counters so far.
func (fl *Faults) Stats() FaultStats {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	s := fl.stats
	s.Tracked = len(fl.volatile)
	return s
}

// sync is File.Sync with the faults applied.
func (fl *Faults) sync(f *File, op Op, flags Flags, off uint64, buf []byte, length uint32) error {
	if err := f.Check(op, flags, off, length); err != nil {
		return err
	}
	if fl.Latency > 0 {
		time.Sleep(fl.Latency)
		fl.mu.Lock()
		fl.stats.Delayed++
		fl.mu.Unlock()
	}
	for _, r := range fl.EIO {
		if r.match(op, off, length) {
			fl.mu.Lock()
			fl.stats.EIO++
			fl.mu.Unlock()
			fl.logf("storage fault: EIO on %s of %d bytes at offset %d (rule %s)", op, length, off, r)
			return f.opError(op, off, length, syscall.EIO)
		}
	}
	if !fl.CrashModel {
		return f.sync(op, flags, off, buf, length)
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.crashed {
		fl.stats.EIO++
		return f.opError(op, off, length, syscall.EIO)
	}
	switch op {
	case OpWrite, OpDiscard, OpWriteZeroes:
		if err := fl.saveOld(f, off, length); err != nil {
			return f.opError(op, off, length, err)
		}
	}
	err := f.sync(op, flags, off, buf, length)
	if err != nil {
		return err
	}
	switch {
	case op == OpFlush:
		clear(fl.volatile)
		fl.stats.Flushes++
	case op != OpRead && flags&FlagFUA != 0:
		// With the requests serialised, nothing newer touched the range:
		// what it holds now is durable.
		lbs := uint64(f.lbs)
		for b := off / lbs; b < (off+uint64(length))/lbs; b++ {
			delete(fl.volatile, b)
		}
	}
	return nil
}

// saveOld records the durable content of the blocks of [off, off+length)
// that are not yet tracked. fl.mu is held.
func (fl *Faults) saveOld(f *File, off uint64, length uint32) error {
	if fl.rfd == nil {
		return errors.New("crash model: file closed")
	}
	lbs := uint64(f.lbs)
	var old []byte
	for b := off / lbs; b < (off+uint64(length))/lbs; b++ {
		if _, ok := fl.volatile[b]; ok {
			continue
		}
		if old == nil {
			old = make([]byte, length)
			if _, err := fl.rfd.ReadAt(old, int64(off)); err != nil {
				return fmt.Errorf("crash model: read the old contents: %w", err)
			}
		}
		i := b*lbs - off
		fl.volatile[b] = old[i : i+lbs : i+lbs]
	}
	return nil
}

// Crash applies the crash model to the file: the storage dies. It must be
// called with no request in flight (after the last one completed, or once
// the File is closed); from then on every request of the File fails with
// EIO without touching the file (a dead disk: a server's final sync on
// shutdown gets EIO too). Every block written since it was last
// made durable (by a successful flush, or a FUA write covering it) gets,
// at random from Seed, either its content from that time ("old") or what
// it holds now ("new"); blocks acknowledged as durable are left alone. The
// file is then synced and the model starts afresh. It needs CrashModel.
func (fl *Faults) Crash() (CrashResult, error) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	var res CrashResult
	if !fl.CrashModel || fl.file == nil {
		return res, errors.New("backend: Crash needs Faults.CrashModel on a File")
	}
	f := fl.file
	w, err := os.OpenFile(f.path, os.O_WRONLY, 0)
	if err != nil {
		return res, fmt.Errorf("backend: crash %s: %w", f.path, err)
	}
	defer w.Close()
	blocks := make([]uint64, 0, len(fl.volatile))
	for b := range fl.volatile {
		blocks = append(blocks, b)
	}
	slices.SortFunc(blocks, cmp.Compare)
	rng := rand.New(rand.NewPCG(fl.Seed, 0x63726173))
	lbs := uint64(f.lbs)
	for _, b := range blocks {
		if rng.IntN(2) == 0 {
			res.Kept++
			continue
		}
		if _, err := w.WriteAt(fl.volatile[b], int64(b*lbs)); err != nil {
			return res, fmt.Errorf("backend: crash %s: revert block at %d: %w", f.path, b*lbs, err)
		}
		res.Reverted++
		res.RevertedBlocks = append(res.RevertedBlocks, b*lbs)
	}
	if err := w.Sync(); err != nil {
		return res, fmt.Errorf("backend: crash %s: sync: %w", f.path, err)
	}
	clear(fl.volatile)
	fl.crashed = true
	fl.stats.Reverted, fl.stats.Kept = res.Reverted, res.Kept
	fl.logf("storage fault: crash of %s: %d blocks not durable: %d reverted, %d kept", f.path, len(blocks), res.Reverted, res.Kept)
	return res, nil
}
