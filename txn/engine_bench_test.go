package txn

import (
	"testing"

	"github.com/dst-dev/dst/internal/wire"
)

// BenchmarkEngineRoundTrip is one transaction through the state machine:
// Submit, Ready/Advance (send), Step (reply), TakeCompletions. It must not
// allocate.
func BenchmarkEngineRoundTrip(b *testing.B) {
	for _, depth := range []int{1, 32} {
		b.Run(map[int]string{1: "depth1", 32: "depth32"}[depth], func(b *testing.B) {
			e := New(Config{Capacity: 64, Timeout: 100, Retries: 3, Ping: 20})
			e.Ready()
			e.Advance()
			e.ConnUp(1024)
			buf := make([]byte, 4096)
			comps := make([]Completion, 0, 64)
			ids := make([]uint64, 0, depth)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += depth {
				for j := range depth {
					e.Submit(Handle(j), wire.OpWrite, 0, uint64(j)*4096, 4096, buf)
				}
				rd := e.Ready()
				ids = ids[:0]
				for _, x := range rd.Send {
					ids = append(ids, x.ID)
				}
				e.Advance()
				for _, id := range ids {
					e.Step(wire.Reply{Op: wire.OpWrite, ID: id})
				}
				comps = e.TakeCompletions(comps[:0])
				if len(comps) != depth {
					b.Fatalf("%d completions", len(comps))
				}
			}
		})
	}
}
