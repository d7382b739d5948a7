//go:build linux

package uring

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

func benchOptions() map[string]Options {
	return map[string]Options{
		"plain":  {Entries: 64},
		"defer":  {Entries: 64, SingleIssuer: true, DeferTaskrun: true},
		"sqe128": {Entries: 64, SQE128: true, CQE32: true},
	}
}

// BenchmarkNop is one NOP per io_uring_enter: the round trip cost.
func BenchmarkNop(b *testing.B) {
	for name, o := range benchOptions() {
		b.Run(name, func(b *testing.B) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			r := newRing(b, o)
			cq := make([]CQE, 1)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s := r.GetSQE()
				s.PrepNop()
				s.SetUserData(uint64(i))
				if _, err := r.SubmitAndWait(1); err != nil {
					b.Fatal(err)
				}
				if r.Reap(cq) != 1 {
					b.Fatal("no completion")
				}
			}
		})
	}
}

// BenchmarkNopBatch32 submits 32 NOPs per io_uring_enter; ns/op is per NOP.
func BenchmarkNopBatch32(b *testing.B) {
	for name, o := range benchOptions() {
		b.Run(name, func(b *testing.B) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			r := newRing(b, o)
			cq := make([]CQE, 32)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += 32 {
				for j := range 32 {
					s := r.GetSQE()
					s.PrepNop()
					s.SetUserData(uint64(j))
				}
				if _, err := r.SubmitAndWait(32); err != nil {
					b.Fatal(err)
				}
				for got := 0; got < 32; {
					got += r.Reap(cq)
				}
			}
		})
	}
}

// BenchmarkDirectRandRead4kQD32 keeps 32 4 KiB O_DIRECT random reads in
// flight on a 64 MiB file on the real disk; ns/op is per read.
func BenchmarkDirectRandRead4kQD32(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const size, depth = 64 << 20, 32
	path := filepath.Join(b.TempDir(), "bench")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	for off := 0; off < size; off += len(chunk) {
		f.WriteAt(chunk, int64(off))
	}
	f.Sync()
	f.Close()
	f, err = os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	r := newRing(b, Options{Entries: depth, SingleIssuer: true, DeferTaskrun: true})
	slab, _ := AlignedBuffer(depth * 4096)
	defer FreeBuffer(slab)
	rng := rand.New(rand.NewPCG(3, 4))
	submit := func(tag int) {
		s := r.GetSQE()
		s.PrepRead(fd, slab[tag*4096:(tag+1)*4096], uint64(rng.IntN(size/4096))*4096)
		s.SetUserData(uint64(tag))
	}
	cq := make([]CQE, depth)
	b.ReportAllocs()
	b.ResetTimer()
	inflight := 0
	for done := 0; done < b.N; {
		for inflight < depth && done+inflight < b.N {
			submit(inflight)
			inflight++
		}
		n, err := r.Wait(cq, -1)
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range cq[:n] {
			if c.Res != 4096 {
				b.Fatalf("read: %d", c.Res)
			}
			done++
			if done+inflight-1 < b.N {
				submit(int(c.UserData))
			} else {
				inflight--
			}
		}
	}
}
