package txn

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/transport/fault"
)

// blockOp is one operation of the history: a write of a value or a read
// that returned one, on one block.
type blockOp struct {
	write bool
	block int
	value uint64
}

// registerModel is a block device as porcupine sees it: every block is a
// register holding the last value written (0 at first). Partitioning by
// block keeps the check linear in the number of blocks.
var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[int][]porcupine.Operation{}
		for _, op := range history {
			b := op.Input.(blockOp).block
			by[b] = append(by[b], op)
		}
		out := make([][]porcupine.Operation, 0, len(by))
		for _, ops := range by {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return uint64(0) },
	Step: func(state, input, output any) (bool, any) {
		in := input.(blockOp)
		if in.write {
			return true, in.value
		}
		return output.(uint64) == state.(uint64), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(blockOp)
		if in.write {
			return fmt.Sprintf("write(%d, %d)", in.block, in.value)
		}
		return fmt.Sprintf("read(%d) -> %d", in.block, output)
	},
}

// TestHistoryLinearizable records every operation of several concurrent
// clients of one engine while a fault proxy cuts the connection (mid
// frame), delays frames and reorders replies, and checks the history
// against the register model: every read returns a value that some
// linearization of the writes allows. Concurrent writes to one block are
// allowed here (the model handles them); a write applied twice, late, or
// lost would show up as a read the model cannot explain. DST_HISTORY_SEEDS
// runs more seeds (make fuzz sets it).
func TestHistoryLinearizable(t *testing.T) {
	seeds := 3
	if s, err := strconv.Atoi(os.Getenv("DST_HISTORY_SEEDS")); err == nil && s > 0 {
		seeds = s
	}
	ops := 2000
	if testing.Short() {
		ops = 500
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			historyRun(t, seed, ops)
		})
	}
}

func historyRun(t *testing.T, seed uint64, nops int) {
	const blocks, bs, workers = 16, 4096, 8
	path := exporttest.File(t, blocks*bs)
	_, addr := exporttest.Start(t, exportCfg(path), exporttest.TCP4)
	rng := rand.New(rand.NewPCG(seed, 99))
	cfg := fault.Config{
		Write: fault.Rules{Cut: true, CutAfter: int64(50_000 + rng.IntN(150_000)), Delay: 50 * time.Microsecond, Jitter: 200 * time.Microsecond},
		Read:  fault.Rules{Cut: true, CutAfter: int64(50_000 + rng.IntN(150_000))},
	}
	p := &fault.Proxy{Listen: "dst://127.0.0.1:0", Target: addr, Rand: rand.New(rand.NewPCG(seed, 7)), Fault: cfg}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := Dial(context.Background(), fastOpts(p.URL().String()+"/disk"))
	if err != nil {
		t.Fatal(err)
	}
	d := newBlockDev(c)
	var (
		mu      sync.Mutex
		history []porcupine.Operation
		next    uint64
		wg      sync.WaitGroup
		failed  = make(chan error, workers)
	)
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			buf := make([]byte, bs)
			for range nops / workers {
				op := blockOp{block: r.IntN(blocks), write: r.IntN(2) == 0}
				call := time.Since(start).Nanoseconds()
				var err error
				if op.write {
					mu.Lock()
					next++
					op.value = next
					mu.Unlock()
					for i := 0; i < bs; i += 8 {
						binary.LittleEndian.PutUint64(buf[i:], op.value)
					}
					err = d.write(uint64(op.block*bs), buf)
				} else {
					var got []byte
					got, err = d.read(uint64(op.block*bs), bs)
					if err == nil {
						op.value = binary.LittleEndian.Uint64(got)
						for i := 0; i < bs; i += 8 {
							if binary.LittleEndian.Uint64(got[i:]) != op.value {
								err = fmt.Errorf("block %d is torn: %d and %d", op.block, op.value, binary.LittleEndian.Uint64(got[i:]))
								break
							}
						}
					}
				}
				ret := time.Since(start).Nanoseconds()
				if err != nil {
					failed <- fmt.Errorf("worker %d: %v", w, err)
					return
				}
				mu.Lock()
				history = append(history, porcupine.Operation{ClientId: w, Input: op, Output: op.value, Call: call, Return: ret})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(failed)
	for err := range failed {
		t.Fatalf("seed %d: %v", seed, err)
	}
	st := c.Stats()
	c.Close(ctx5s(t))
	res, info := porcupine.CheckOperationsVerbose(registerModel, history, 30*time.Second)
	switch res {
	case porcupine.Illegal:
		f, _ := os.CreateTemp("", "dst-history-*.html")
		porcupine.Visualize(registerModel, info, f)
		f.Close()
		t.Fatalf("seed %d: history of %d operations is not linearizable (visualization: %s)", seed, len(history), f.Name())
	case porcupine.Unknown:
		t.Fatalf("seed %d: linearizability check timed out", seed)
	}
	if st.Reconnects == 0 {
		t.Fatalf("seed %d: no connection was cut: the run proved nothing", seed)
	}
	t.Logf("seed %d: %d operations linearizable; %d reconnects, %d resends, %d timeouts", seed, len(history), st.Reconnects, st.Resent, st.Timeouts)
}
