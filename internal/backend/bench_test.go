//go:build linux

package backend

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dst-dev/dst/internal/uring"
	"golang.org/x/sys/unix"
)

const benchSize = 256 << 20

// benchFiles are fully written (allocated) 256 MiB files: one on the root
// filesystem (ext4 on the host's disk: the real thing, but its latency and
// throttling dominate), one on tmpfs in /dev/shm if there is one (O_DIRECT
// accepted, no device: shows the per-request CPU cost of each path).
func benchFiles(b *testing.B) map[string]string {
	files := map[string]string{"disk": tempFile(b, benchSize)}
	var sfs unix.Statfs_t
	if unix.Statfs("/dev/shm", &sfs) == nil && sfs.Type == unix.TMPFS_MAGIC {
		dir, err := os.MkdirTemp("/dev/shm", "dst-backend-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		files["tmpfs"] = filepath.Join(dir, "bench.img")
		fillFile(b, files["tmpfs"], benchSize)
	}
	return files
}

func benchNames(files map[string]string) []string {
	names := make([]string, 0, len(files))
	for _, n := range []string{"disk", "tmpfs"} {
		if files[n] != "" {
			names = append(names, n)
		}
	}
	return names
}

// BenchmarkWorker: 4 KiB O_DIRECT random reads or writes through a Worker
// of the given depth, driven by depth client goroutines that each submit
// one request and wait for its Done (as exporter connections would).
// ns/op is per request.
func BenchmarkWorker(b *testing.B) {
	files := benchFiles(b)
	for _, where := range benchNames(files) {
		path := files[where]
		for _, op := range []Op{OpRead, OpWrite} {
			for _, depth := range []int{1, 32} {
				b.Run(where+"/"+op.String()+"/qd"+strconv.Itoa(depth), func(b *testing.B) {
					f := openFile(b, path, Options{})
					w := newWorker(b, depth)
					slab := alignedBuf(b, depth*4096)
					var issued atomic.Int64
					start := make(chan struct{})
					var wg sync.WaitGroup
					for c := range depth {
						wt := newWaiter()
						wt.Done = func(r *Request, err error) { wt.ch <- err }
						wt.File, wt.Op, wt.Buf, wt.Length = f, op, slab[c*4096:(c+1)*4096], 4096
						rng := rand.New(rand.NewPCG(uint64(c), 1))
						wg.Add(1)
						go func() {
							defer wg.Done()
							<-start
							for issued.Add(1) <= int64(b.N) {
								wt.Off = rng.Uint64N(benchSize/4096) * 4096
								if err := w.Submit(&wt.Request); err != nil {
									b.Error(err)
									return
								}
								if err := <-wt.ch; err != nil {
									b.Error(err)
									return
								}
							}
						}()
					}
					b.SetBytes(4096)
					b.ReportAllocs()
					b.ResetTimer()
					close(start)
					wg.Wait()
				})
			}
		}
	}
}

// BenchmarkPrepRing: the same I/O with Check/Prep/Result called directly
// on the caller's own ring (the ublk file target's way), depth requests
// kept in flight by one goroutine.
func BenchmarkPrepRing(b *testing.B) {
	files := benchFiles(b)
	for _, where := range benchNames(files) {
		path := files[where]
		for _, op := range []Op{OpRead, OpWrite} {
			for _, depth := range []int{1, 32} {
				b.Run(where+"/"+op.String()+"/qd"+strconv.Itoa(depth), func(b *testing.B) {
					runtime.LockOSThread()
					defer runtime.UnlockOSThread()
					f := openFile(b, path, Options{})
					r, err := uring.New(uring.Options{Entries: uint32(depth), SingleIssuer: true, DeferTaskrun: true})
					if err != nil {
						b.Fatal(err)
					}
					defer r.Close()
					slab := alignedBuf(b, depth*4096)
					offs := make([]uint64, depth)
					rng := rand.New(rand.NewPCG(5, 6))
					submit := func(tag int) {
						offs[tag] = rng.Uint64N(benchSize/4096) * 4096
						if err := f.Check(op, 0, offs[tag], 4096); err != nil {
							b.Fatal(err)
						}
						sqe := r.GetSQE()
						f.Prep(sqe, op, 0, offs[tag], slab[tag*4096:(tag+1)*4096], 4096)
						sqe.SetUserData(uint64(tag))
					}
					cq := make([]uring.CQE, depth)
					b.SetBytes(4096)
					b.ReportAllocs()
					b.ResetTimer()
					inflight, issued := 0, 0
					for ; inflight < depth && issued < b.N; inflight++ {
						submit(inflight)
						issued++
					}
					for inflight > 0 {
						n, err := r.Wait(cq, -1)
						if err != nil {
							b.Fatal(err)
						}
						for _, c := range cq[:n] {
							tag := int(c.UserData)
							if step, err := f.Result(op, 0, offs[tag], 4096, c.Res); step != StepDone || err != nil {
								b.Fatal(step, err)
							}
							if issued < b.N {
								submit(tag)
								issued++
							} else {
								inflight--
							}
						}
					}
				})
			}
		}
	}
}
