package transport_test

import (
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/dst-dev/dst/transport"
)

// The benchmarks stream b.N writes of 4 KiB or 128 KiB one way, with the
// reader running concurrently, as a pipelining client does: the writer never
// waits for an answer. net.Pipe is there for comparison: it is unbuffered,
// so each Write waits for the reader.

var benchSizes = []int{4 << 10, 128 << 10}

func benchStream(b *testing.B, newPair func(b *testing.B) (net.Conn, net.Conn)) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			c, s := newPair(b)
			buf := make([]byte, size)
			total := int64(b.N) * int64(size)
			done := make(chan error, 1)
			b.SetBytes(int64(size))
			b.ResetTimer()
			go func() {
				_, err := io.CopyBuffer(io.Discard, io.LimitReader(s, total), make([]byte, 256<<10))
				done <- err
			}()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

func kindPair(k kind) func(b *testing.B) (net.Conn, net.Conn) {
	return func(b *testing.B) (net.Conn, net.Conn) { return pair(b, k, transport.Options{}) }
}

func BenchmarkMem(b *testing.B)  { benchStream(b, kindPair(kinds[3])) }
func BenchmarkTCP(b *testing.B)  { benchStream(b, kindPair(kinds[0])) }
func BenchmarkUnix(b *testing.B) { benchStream(b, kindPair(kinds[2])) }

func BenchmarkPipe(b *testing.B) {
	benchStream(b, func(b *testing.B) (net.Conn, net.Conn) {
		c, s := net.Pipe()
		b.Cleanup(func() { c.Close(); s.Close() })
		return c, s
	})
}
