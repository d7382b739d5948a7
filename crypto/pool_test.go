package crypto

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// pipeline is one direction of a connection through a Pool: the producer
// seals, the consumer (the "wire") opens in order on the other side.
type pipeline struct {
	send *Sealer
	recv *Opener
	q    *Queue
	jobs []Job
}

// TestPoolOrder: jobs of mixed sizes (some inline, some on workers) come
// out in submission order, sealed correctly; the opening side, through
// its own queue, verifies every one in stream order.
func TestPoolOrder(t *testing.T) {
	checkNoLeak(t)
	for _, s := range []Suite{CRC32C, BLAKE3, AES256GCM, ChaCha20Poly1305} {
		t.Run(s.String(), func(t *testing.T) {
			p := NewPool(PoolConfig{Min: 1, Max: 4, Idle: 5 * time.Millisecond})
			defer p.Close()
			c, e := testSession(t, s)
			tag := s.TagSize()
			const n, depth = 2000, 64
			sealQ := p.NewQueue(depth, 512)
			openQ := p.NewQueue(depth, 512)
			rng := rand.New(rand.NewPCG(3, 4))
			sizes := make([]int, n)
			for i := range sizes {
				sizes[i] = rng.IntN(9000)
			}
			// Producer: jobs from a ring of depth+1 (a job is reused only
			// after the consumer has seen it: Submit waits on the queue).
			type frame struct {
				hdr, plain []byte
				job        Job
			}
			ring := make([]frame, 2*depth+2)
			for i := range ring {
				ring[i].hdr = make([]byte, 40)
				ring[i].plain = make([]byte, 9000)
			}
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range n {
					fr := &ring[i%len(ring)]
					copy(fr.hdr, testHdr(i))
					for j := range sizes[i] {
						fr.plain[j] = byte(i + j)
					}
					j := &fr.job
					f, err := c.Send.Next(sizes[i])
					if err != nil {
						panic(err)
					}
					*j = Job{Frame: f, Hdr: fr.hdr, Payload: fr.plain[:sizes[i]], Body: make([]byte, sizes[i]+tag), Data: i}
					sealQ.Submit(j)
				}
				sealQ.Close()
			}()
			// Middle: the "wire" takes sealed frames in order and hands
			// them to the receiving side, which opens them through
			// openQ.
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					j, ok := sealQ.Next()
					if !ok {
						break
					}
					if j.Data.(int) != i {
						t.Errorf("sealed job %d came out as %d", j.Data.(int), i)
					}
					n := len(j.Payload)
					f, err := e.Recv.Next(n)
					if err != nil {
						panic(err)
					}
					oj := &Job{Frame: f, Open: true, Hdr: bytes.Clone(j.Hdr), Body: j.Body, Payload: make([]byte, n), Data: i}
					openQ.Submit(oj)
				}
				openQ.Close()
			}()
			got := 0
			for {
				j, ok := openQ.Next()
				if !ok {
					break
				}
				i := j.Data.(int)
				if i != got {
					t.Fatalf("opened job %d came out as %d", i, got)
				}
				if j.Err != nil {
					t.Fatalf("job %d: %v", i, j.Err)
				}
				for k, b := range j.Payload {
					if b != byte(i+k) {
						t.Fatalf("job %d: payload byte %d", i, k)
					}
				}
				got++
			}
			wg.Wait()
			if got != n {
				t.Fatalf("%d jobs out of %d", got, n)
			}
		})
	}
}

// TestPoolResize: under load from several queues the pool grows to Max;
// idle, it shrinks back to Min. Run with -race.
func TestPoolResize(t *testing.T) {
	checkNoLeak(t)
	p := NewPool(PoolConfig{Min: 1, Max: 4, Idle: 20 * time.Millisecond, Backlog: 64})
	defer p.Close()
	c, _ := testSession(t, AES256GCM)
	var mu sync.Mutex // the sealer is serial: Next+Submit under one lock per queue
	load := func(rounds int) {
		var wg sync.WaitGroup
		for w := range 3 {
			q := p.NewQueue(32, -1)
			wg.Add(2)
			go func() {
				defer wg.Done()
				jobs := make([]Job, 40)
				for i := range rounds {
					j := &jobs[i%len(jobs)]
					mu.Lock()
					f, _ := c.Send.Next(32 << 10)
					*j = Job{Frame: f, Hdr: testHdr(w), Payload: make([]byte, 32<<10), Body: make([]byte, 32<<10+16)}
					q.Submit(j)
					mu.Unlock()
				}
				q.Close()
			}()
			go func() {
				defer wg.Done()
				for {
					if _, ok := q.Next(); !ok {
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	for cycle := range 3 {
		load(300)
		st := p.Stats()
		if st.Grown == 0 {
			t.Fatalf("cycle %d: the pool never grew: %+v", cycle, st)
		}
		deadline := time.Now().Add(5 * time.Second)
		for p.Stats().Workers > 1 {
			if time.Now().After(deadline) {
				t.Fatalf("cycle %d: still %d workers after idling", cycle, p.Stats().Workers)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	st := p.Stats()
	if st.Shrunk == 0 || st.Workers != 1 {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("after 3 load cycles: %+v", st)
}

// TestPoolCloseUnderLoad: Close while producers are submitting. Every job
// submitted is processed (by a worker before Close, inline after), every
// consumer gets all of its jobs, and all goroutines end.
func TestPoolCloseUnderLoad(t *testing.T) {
	checkNoLeak(t)
	for round := range 20 {
		p := NewPool(PoolConfig{Min: 1, Max: 3, Idle: time.Millisecond})
		const producers, per = 3, 200
		var wg sync.WaitGroup
		counts := make([]int, producers)
		for w := range producers {
			c, e := testSession(t, ChaCha20Poly1305)
			q := p.NewQueue(16, -1)
			wg.Add(2)
			go func() {
				defer wg.Done()
				jobs := make([]Job, 40)
				for i := range per {
					j := &jobs[i%len(jobs)]
					f, _ := c.Send.Next(1024)
					*j = Job{Frame: f, Hdr: testHdr(i), Payload: make([]byte, 1024), Body: make([]byte, 1024+16)}
					q.Submit(j)
				}
				q.Close()
			}()
			go func() {
				defer wg.Done()
				for {
					j, ok := q.Next()
					if !ok {
						return
					}
					f, _ := e.Recv.Next(1024)
					if err := f.OpenTo(j.Hdr, j.Body, make([]byte, 1024)); err != nil {
						t.Errorf("round %d producer %d: %v", round, w, err)
					}
					counts[w]++
				}
			}()
		}
		time.Sleep(time.Duration(round%4) * time.Millisecond)
		p.Close()
		wg.Wait()
		for w, n := range counts {
			if n != per {
				t.Fatalf("round %d producer %d: %d jobs of %d", round, w, n, per)
			}
		}
		if st := p.Stats(); st.Workers != 0 {
			t.Fatalf("workers after Close: %+v", st)
		}
	}
}

func TestDefaultInline(t *testing.T) {
	for _, s := range allSuites {
		if DefaultInline(s) <= 0 {
			t.Errorf("%v: %d", s, DefaultInline(s))
		}
	}
}

// TestPoolBatch: a writer that seals a batch through the pool and takes
// it back itself (submit up to depth, then Next each), as txn's run loop
// would before one writev.
func TestPoolBatch(t *testing.T) {
	checkNoLeak(t)
	p := NewPool(PoolConfig{Max: 2})
	defer p.Close()
	c, e := testSession(t, AES256GCM)
	const depth = 16
	q := p.NewQueue(depth, DefaultInline(AES256GCM))
	jobs := make([]Job, depth)
	for round := range 50 {
		n := 1 + round%depth
		for i := range n {
			size := (i * 5000) % 40000
			j := &jobs[i]
			f, _ := c.Send.Next(size)
			*j = Job{Frame: f, Hdr: testHdr(i), Payload: bytes.Repeat([]byte{byte(i)}, size), Body: make([]byte, size+16), Data: i}
			q.Submit(j)
		}
		for i := range n {
			j, _ := q.Next()
			if j.Data.(int) != i {
				t.Fatalf("round %d: job %d out as %d", round, j.Data.(int), i)
			}
			plain := make([]byte, len(j.Payload))
			if err := e.Recv.OpenTo(j.Hdr, j.Body, plain); err != nil || !bytes.Equal(plain, j.Payload) {
				t.Fatalf("round %d job %d: %v", round, i, err)
			}
		}
	}
	q.Close()
}
