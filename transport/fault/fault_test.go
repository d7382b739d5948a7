package fault_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dst-dev/dst/transport"
	"github.com/dst-dev/dst/transport/fault"
	"github.com/dst-dev/dst/transport/internal/leakcheck"
)

var memSeq atomic.Int64

// memPair returns two connected mem conns, closed at cleanup.
func memPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	l, u, err := transport.Listen(context.Background(), fmt.Sprintf("dst+mem://fault-%d", memSeq.Add(1)), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = transport.DialURL(context.Background(), u, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	server, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// logger collects fault log lines.
type logger struct {
	mu    sync.Mutex
	lines []string
}

func (l *logger) Log(s string) {
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
}

func (l *logger) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

func (l *logger) count(substr string) int {
	n := 0
	for _, s := range l.all() {
		if strings.Contains(s, substr) {
			n++
		}
	}
	return n
}

func seeded(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed)) }

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// readAllAsync reads c to the end in a goroutine owned by the test.
func readAllAsync(t *testing.T, c net.Conn) func() ([]byte, error) {
	type res struct {
		b   []byte
		err error
	}
	ch := make(chan res, 1)
	go func() {
		b, err := io.ReadAll(c)
		ch <- res{b, err}
	}()
	t.Cleanup(func() { c.Close() })
	return func() ([]byte, error) {
		select {
		case r := <-ch:
			return r.b, r.err
		case <-time.After(10 * time.Second):
			c.Close()
			r := <-ch
			t.Error("reader did not finish in 10s")
			return r.b, r.err
		}
	}
}

func TestCutWrite(t *testing.T) {
	leakcheck.Check(t)
	client, server := memPair(t)
	var log logger
	fc := fault.Wrap(client, fault.Config{Write: fault.Rules{Cut: true, CutAfter: 1000}, Log: log.Log}, seeded(1))
	result := readAllAsync(t, server)
	data := pattern(3000)
	var werr error
	var writes int
	for off := 0; off < len(data); off += 300 {
		writes++
		if _, werr = fc.Write(data[off : off+300]); werr != nil {
			break
		}
	}
	if !errors.Is(werr, fault.ErrCut) || writes != 4 {
		t.Errorf("write %d failed with %v; want write 4 (bytes 900-1200) to fail with ErrCut", writes, werr)
	}
	got, err := result()
	if err != nil || !bytes.Equal(got, data[:1000]) {
		t.Errorf("peer read %d bytes, %v; want exactly the first 1000 then EOF", len(got), err)
	}
	if _, err := fc.Write([]byte("x")); !errors.Is(err, fault.ErrCut) {
		t.Errorf("Write after cut: %v, want ErrCut", err)
	}
	if _, err := fc.Read(make([]byte, 1)); !errors.Is(err, fault.ErrCut) {
		t.Errorf("Read after cut: %v, want ErrCut", err)
	}
	if !fc.Stats().Cut || fc.Stats().Write.Bytes != 1000 {
		t.Errorf("Stats = %+v", fc.Stats())
	}
	if log.count("write: cut after 1000 bytes") != 1 {
		t.Errorf("log = %q", log.all())
	}
	if err := fc.Close(); err != nil {
		t.Errorf("Close after cut: %v", err)
	}
}

// TestCutWriteExact: a Write ending exactly at the cut point succeeds, and
// the peer sees EOF right away.
func TestCutWriteExact(t *testing.T) {
	leakcheck.Check(t)
	client, server := memPair(t)
	fc := fault.Wrap(client, fault.Config{Write: fault.Rules{Cut: true, CutAfter: 10}}, seeded(1))
	result := readAllAsync(t, server)
	if n, err := fc.Write(pattern(10)); n != 10 || err != nil {
		t.Errorf("Write up to the cut = %d, %v", n, err)
	}
	if got, err := result(); err != nil || len(got) != 10 {
		t.Errorf("peer read %d bytes, %v; want 10 then EOF", len(got), err)
	}
}

func TestCutRead(t *testing.T) {
	leakcheck.Check(t)
	client, server := memPair(t)
	var log logger
	fs := fault.Wrap(server, fault.Config{Read: fault.Rules{Cut: true, CutAfter: 777}, Log: log.Log}, seeded(1))
	data := pattern(5000)
	if _, err := client.Write(data); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 100)
	var err error
	for {
		var n int
		n, err = fs.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if !errors.Is(err, fault.ErrCut) || !bytes.Equal(got, data[:777]) {
		t.Errorf("read %d bytes then %v; want exactly 777 then ErrCut", len(got), err)
	}
	// The peer sees the conn closed.
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(buf); err != io.EOF {
		t.Errorf("peer Read after cut: %v, want io.EOF", err)
	}
	if log.count("read: cut after 777 bytes") != 1 {
		t.Errorf("log = %q", log.all())
	}
}

func TestCutAt(t *testing.T) {
	leakcheck.Check(t)
	client, server := memPair(t)
	var log logger
	start := time.Now()
	fc := fault.Wrap(client, fault.Config{CutAt: 50 * time.Millisecond, Log: log.Log}, seeded(1))
	defer fc.Close()
	if _, err := fc.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	_, err := fc.Read(make([]byte, 1))
	if !errors.Is(err, fault.ErrCut) {
		t.Errorf("Read across the cut: %v, want ErrCut", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("cut after %v, want 50ms", d)
	}
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(server); err != nil || string(got) != "early" {
		t.Errorf("peer read %q, %v; want \"early\" then EOF", got, err)
	}
	if log.count("cut at 50ms") != 1 {
		t.Errorf("log = %q", log.all())
	}
}

func bitDiff(a, b []byte) (n int, at []int) {
	for i := range a {
		if d := bits.OnesCount8(a[i] ^ b[i]); d > 0 {
			n += d
			at = append(at, i)
		}
	}
	return n, at
}

func TestCorruptProb(t *testing.T) {
	leakcheck.Check(t)
	client, server := memPair(t)
	var log logger
	fc := fault.Wrap(client, fault.Config{Write: fault.Rules{CorruptProb: 1}, Log: log.Log}, seeded(7))
	data := pattern(4096)
	orig := bytes.Clone(data)
	if _, err := fc.Write(data); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, orig) {
		t.Error("Write modified the caller's buffer")
	}
	got := make([]byte, len(data))
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	if n, _ := bitDiff(got, data); n != 1 {
		t.Errorf("%d bits differ, want exactly 1", n)
	}
	if fc.Stats().Write.Corrupted != 1 || log.count("write: corrupt: flipped bit") != 1 {
		t.Errorf("stats %+v, log %q", fc.Stats(), log.all())
	}
}

func TestCorruptAt(t *testing.T) {
	leakcheck.Check(t)
	for _, side := range []string{"write", "read"} {
		t.Run(side, func(t *testing.T) {
			client, server := memPair(t)
			rules := fault.Rules{CorruptAt: []int64{10, 5000, 8191}}
			var cfg fault.Config
			var w io.Writer = client
			var r io.Reader = server
			if side == "write" {
				cfg.Write = rules
				w = fault.Wrap(client, cfg, seeded(3))
			} else {
				cfg.Read = rules
				r = fault.Wrap(server, cfg, seeded(3))
			}
			data := pattern(8192)
			go func() {
				for off := 0; off < len(data); off += 1000 {
					w.Write(data[off:min(off+1000, len(data))])
				}
			}()
			got := make([]byte, len(data))
			if _, err := io.ReadFull(r, got); err != nil {
				t.Fatal(err)
			}
			n, at := bitDiff(got, data)
			if n != 3 || fmt.Sprint(at) != "[10 5000 8191]" {
				t.Errorf("%d bits differ at %v; want one bit at each of 10, 5000, 8191", n, at)
			}
		})
	}
}

// lenFramer frames a 4-byte big-endian payload length then the payload.
var lenFramer = fault.FixedHeader(4, func(h []byte) (int, error) {
	n := binary.BigEndian.Uint32(h)
	if n > 1<<20 {
		return 0, fmt.Errorf("payload of %d bytes", n)
	}
	return int(n), nil
})

// frames returns n frames whose payload is a sequence number and filler,
// of varying sizes.
func frames(n int) [][]byte {
	var out [][]byte
	for i := range n {
		size := 4 + (i*37)%300
		f := make([]byte, 4+size)
		binary.BigEndian.PutUint32(f, uint32(size))
		binary.BigEndian.PutUint32(f[4:], uint32(i))
		for j := 8; j < len(f); j++ {
			f[j] = byte(i + j)
		}
		out = append(out, f)
	}
	return out
}

// parseFrames splits a stream into frames, checking each is intact, and
// returns their sequence numbers.
func parseFrames(t *testing.T, stream []byte) []int {
	t.Helper()
	var seqs []int
	for len(stream) > 0 {
		if len(stream) < 8 {
			t.Fatalf("truncated frame header: %d bytes left", len(stream))
		}
		size := int(binary.BigEndian.Uint32(stream))
		if 4+size > len(stream) {
			t.Fatalf("truncated frame: %d bytes, %d left", 4+size, len(stream))
		}
		seq := int(binary.BigEndian.Uint32(stream[4:]))
		want := frames(seq + 1)[seq]
		if !bytes.Equal(stream[:4+size], want) {
			t.Fatalf("frame %d damaged", seq)
		}
		seqs = append(seqs, seq)
		stream = stream[4+size:]
	}
	return seqs
}

// writeChunked writes the frames as one stream cut into random chunks, so
// that writes hold parts of frames or several frames.
func writeChunked(w io.Writer, fs [][]byte, chunkSeed uint64) error {
	stream := bytes.Join(fs, nil)
	rng := seeded(chunkSeed)
	for len(stream) > 0 {
		n := min(len(stream), 1+rng.IntN(700))
		if _, err := w.Write(stream[:n]); err != nil {
			return err
		}
		stream = stream[n:]
	}
	return nil
}

// runDrop sends 200 frames through a write-side Drop with a Framer and
// returns the sequence numbers received and the log.
func runDrop(t *testing.T, seed, chunkSeed uint64) ([]int, []string) {
	client, server := memPair(t)
	var log logger
	fc := fault.Wrap(client, fault.Config{Write: fault.Rules{Framer: lenFramer, DropProb: 0.3}, Log: log.Log}, seeded(seed))
	result := readAllAsync(t, server)
	if err := writeChunked(fc, frames(200), chunkSeed); err != nil {
		t.Fatal(err)
	}
	fc.Close()
	stream, err := result()
	if err != nil {
		t.Fatal(err)
	}
	seqs := parseFrames(t, stream)
	if st := fc.Stats().Write; st.Dropped+len(seqs) != 200 || st.Units != 200 {
		t.Errorf("received %d frames, stats %+v; want received + dropped = units = 200", len(seqs), st)
	}
	if log.count("write: drop: frame") != 200-len(seqs) {
		t.Errorf("%d drops logged, %d frames missing", log.count("drop"), 200-len(seqs))
	}
	return seqs, log.all()
}

func TestDropFrames(t *testing.T) {
	leakcheck.Check(t)
	seqs, _ := runDrop(t, 42, 1)
	if len(seqs) < 100 || len(seqs) > 180 {
		t.Errorf("%d of 200 frames received with DropProb 0.3", len(seqs))
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("frames out of order: %v", seqs)
		}
	}
	// Units are frames: how the stream was cut into writes does not
	// change which frames are dropped.
	seqs2, _ := runDrop(t, 42, 2)
	if fmt.Sprint(seqs) != fmt.Sprint(seqs2) {
		t.Errorf("same seed, other write chunking: received %v, then %v", seqs, seqs2)
	}
}

func TestDropFramesRead(t *testing.T) {
	leakcheck.Check(t)
	client, server := memPair(t)
	var log logger
	fs := fault.Wrap(server, fault.Config{Read: fault.Rules{Framer: lenFramer, DropProb: 0.5}, Log: log.Log}, seeded(5))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		writeChunked(client, frames(100), 9)
		client.Close()
	}()
	stream, err := io.ReadAll(fs)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	seqs := parseFrames(t, stream)
	if len(seqs) == 0 || len(seqs) == 100 || fs.Stats().Read.Dropped != 100-len(seqs) {
		t.Errorf("received %d frames, stats %+v", len(seqs), fs.Stats().Read)
	}
}

func TestFramerError(t *testing.T) {
	leakcheck.Check(t)
	client, _ := memPair(t)
	fc := fault.Wrap(client, fault.Config{Write: fault.Rules{Framer: lenFramer}}, seeded(1))
	hdr := binary.BigEndian.AppendUint32(nil, 1<<30)
	if _, err := fc.Write(hdr); !errors.Is(err, fault.ErrFraming) {
		t.Errorf("Write of a bad header: %v, want ErrFraming", err)
	}
}

// TestSameSeedSameSequence: the same seed replays the same faults; another
// seed does not.
func TestSameSeedSameSequence(t *testing.T) {
	leakcheck.Check(t)
	run := func(seed uint64) (string, []string) {
		client, server := memPair(t)
		var log logger
		cfg := fault.Config{
			Write: fault.Rules{Framer: lenFramer, DropProb: 0.2, CorruptProb: 0.2, Delay: time.Microsecond, Jitter: 50 * time.Microsecond},
			Log:   log.Log,
		}
		fc := fault.Wrap(client, cfg, seeded(seed))
		result := readAllAsync(t, server)
		if err := writeChunked(fc, frames(100), seed); err != nil {
			t.Fatal(err)
		}
		fc.Close()
		got, err := result()
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%x", got), log.all()
	}
	d1, l1 := run(42)
	d2, l2 := run(42)
	d3, l3 := run(43)
	if d1 != d2 || strings.Join(l1, "\n") != strings.Join(l2, "\n") {
		t.Errorf("same seed, different runs:\n%s\nvs\n%s", strings.Join(l1, "\n"), strings.Join(l2, "\n"))
	}
	if len(l1) < 20 {
		t.Errorf("only %d faults logged", len(l1))
	}
	if d1 == d3 || strings.Join(l1, "\n") == strings.Join(l3, "\n") {
		t.Error("seeds 42 and 43 gave the same faults")
	}
}

func TestDelay(t *testing.T) {
	leakcheck.Check(t)
	client, server := memPair(t)
	var log logger
	const delay, jitter = 30 * time.Millisecond, 20 * time.Millisecond
	fc := fault.Wrap(client, fault.Config{Write: fault.Rules{Delay: delay, Jitter: jitter}, Log: log.Log}, seeded(1))
	go io.Copy(io.Discard, server)
	start := time.Now()
	for range 5 {
		if _, err := fc.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 5*delay {
		t.Errorf("5 writes took %v, want at least %v", d, 5*delay)
	}
	// Each delay is within [delay, delay+jitter), and they vary.
	var delays []time.Duration
	for _, line := range log.all() {
		if _, v, ok := strings.Cut(line, "write: delay: write #"); ok {
			_, v, _ = strings.Cut(v, " by ")
			d, err := time.ParseDuration(v)
			if err != nil || d < delay || d >= delay+jitter {
				t.Errorf("logged delay %q not in [%v, %v)", line, delay, delay+jitter)
			}
			delays = append(delays, d)
		}
	}
	if len(delays) != 5 || fc.Stats().Write.Delayed != 5 {
		t.Errorf("log %q", log.all())
	} else if delays[0] == delays[1] && delays[1] == delays[2] {
		t.Errorf("no jitter: %v", delays)
	}
	// The delay honours the write deadline.
	slow := fault.Wrap(client, fault.Config{Write: fault.Rules{Delay: time.Hour}}, seeded(1))
	slow.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := slow.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("delayed Write past its deadline: %v", err)
	}
	// Read-side delay with a Framer: each frame is held back.
	c2, s2 := memPair(t)
	fr := fault.Wrap(s2, fault.Config{Read: fault.Rules{Framer: lenFramer, Delay: delay}}, seeded(1))
	writeChunked(c2, frames(3), 1)
	start = time.Now()
	buf := make([]byte, 1000)
	for range 3 {
		if _, err := fr.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 3*delay {
		t.Errorf("3 delayed frames read in %v, want >= %v", d, 3*delay)
	}
}

func TestStall(t *testing.T) {
	leakcheck.Check(t)
	t.Run("read", func(t *testing.T) {
		client, server := memPair(t)
		var log logger
		fs := fault.Wrap(server, fault.Config{Read: fault.Rules{StallAfter: 100, StallFor: 200 * time.Millisecond}, Log: log.Log}, seeded(1))
		client.Write(pattern(300))
		got := 0
		buf := make([]byte, 1000)
		for got < 100 {
			n, err := fs.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
		if got != 100 {
			t.Errorf("first reads gave %d bytes, want 100 before the stall", got)
		}
		start := time.Now()
		n, err := fs.Read(buf)
		if err != nil || n != 200 {
			t.Fatalf("Read after the stall = %d, %v", n, err)
		}
		if d := time.Since(start); d < 190*time.Millisecond {
			t.Errorf("bytes after 100 came %v after the first 100, want a 200ms stall", d)
		}
		if log.count("read: stall: after 100 bytes for 200ms") != 1 {
			t.Errorf("log %q", log.all())
		}
	})
	t.Run("write", func(t *testing.T) {
		client, server := memPair(t)
		fc := fault.Wrap(client, fault.Config{Write: fault.Rules{StallAfter: 100, StallFor: 400 * time.Millisecond}}, seeded(1))
		var writeDone atomic.Bool
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1000)
			n, _ := io.ReadAtLeast(server, buf, 100)
			if n != 100 || writeDone.Load() {
				t.Errorf("peer first got %d bytes (Write done: %v); want 100 while the Write stalls", n, writeDone.Load())
			}
		}()
		start := time.Now()
		if _, err := fc.Write(pattern(300)); err != nil {
			t.Fatal(err)
		}
		writeDone.Store(true)
		if d := time.Since(start); d < 390*time.Millisecond {
			t.Errorf("Write took %v, want >= 400ms", d)
		}
		wg.Wait()
	})
	t.Run("close unblocks", func(t *testing.T) {
		client, server := memPair(t)
		fs := fault.Wrap(server, fault.Config{Read: fault.Rules{StallFor: time.Hour}}, seeded(1))
		client.Write([]byte("x"))
		time.AfterFunc(30*time.Millisecond, func() { fs.Close() })
		if _, err := fs.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("stalled Read after Close: %v, want net.ErrClosed", err)
		}
	})
}

func TestPartition(t *testing.T) {
	leakcheck.Check(t)
	t.Run("stall then heal", func(t *testing.T) {
		client, server := memPair(t)
		var log logger
		start := time.Now()
		fc := fault.Wrap(client, fault.Config{Partition: fault.Partition{For: 500 * time.Millisecond}, Log: log.Log}, seeded(1))
		defer fc.Close()
		// A read with a shorter deadline times out, as over a silent network.
		server.Write([]byte("reply"))
		fc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := fc.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Read during partition: %v, want a timeout", err)
		}
		fc.SetReadDeadline(time.Time{})
		// A write waits for the heal, then goes through.
		if _, err := fc.Write([]byte("request")); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < 490*time.Millisecond {
			t.Errorf("Write returned after %v, during the partition", d)
		}
		buf := make([]byte, 7)
		if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "request" {
			t.Errorf("peer got %q, %v", buf, err)
		}
		if _, err := io.ReadFull(fc, buf[:5]); err != nil || string(buf[:5]) != "reply" {
			t.Errorf("read after heal %q, %v", buf[:5], err)
		}
		if log.count("partition: start") != 1 || log.count("partition: healed") != 1 {
			t.Errorf("log %q", log.all())
		}
	})
	t.Run("lose", func(t *testing.T) {
		client, server := memPair(t)
		var log logger
		result := readAllAsync(t, server)
		if _, err := client.Write([]byte("before")); err != nil {
			t.Fatal(err)
		}
		// The partition starts at Wrap, so the Write below is inside it
		// unless this goroutine is descheduled for 500ms.
		fc := fault.Wrap(client, fault.Config{
			Partition: fault.Partition{For: 500 * time.Millisecond, Lose: true},
			Log:       log.Log,
		}, seeded(1))
		defer fc.Close()
		start := time.Now()
		if n, err := fc.Write([]byte("during")); n != 6 || err != nil {
			t.Errorf("Write during a losing partition = %d, %v; want it swallowed", n, err)
		}
		got, err := result()
		if err != nil || string(got) != "before" {
			t.Errorf("peer read %q, %v; want \"before\" then EOF", got, err)
		}
		if d := time.Since(start); d < 450*time.Millisecond {
			t.Errorf("peer saw EOF after %v, before the heal", d)
		}
		if _, err := fc.Write([]byte("after")); !errors.Is(err, fault.ErrCut) {
			t.Errorf("Write after the heal: %v, want ErrCut", err)
		}
		if st := fc.Stats(); st.Lost != 6 || !st.Cut {
			t.Errorf("stats %+v", st)
		}
		if log.count("partition: healed after losing 6 bytes") != 1 {
			t.Errorf("log %q", log.all())
		}
	})
	t.Run("lose nothing", func(t *testing.T) {
		client, server := memPair(t)
		fc := fault.Wrap(client, fault.Config{Partition: fault.Partition{For: 50 * time.Millisecond, Lose: true}}, seeded(1))
		defer fc.Close()
		time.Sleep(80 * time.Millisecond)
		if _, err := fc.Write([]byte("ok")); err != nil {
			t.Fatalf("Write after a partition that lost nothing: %v", err)
		}
		buf := make([]byte, 2)
		if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "ok" {
			t.Errorf("peer got %q, %v", buf, err)
		}
	})
}

func TestWrapListenerAndDial(t *testing.T) {
	leakcheck.Check(t)
	l, u, err := transport.Listen(context.Background(), fmt.Sprintf("dst+mem://fault-%d", memSeq.Add(1)), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var log logger
	fl := fault.WrapListener(l, fault.Config{Name: "srv", Read: fault.Rules{Cut: true, CutAfter: 5}, Log: log.Log}, seeded(1))
	defer fl.Close()
	if err := fl.SetDeadline(time.Now().Add(10 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := fl.Accept(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Accept past deadline: %v", err)
	}
	fl.SetDeadline(time.Time{})
	for i := 1; i <= 2; i++ {
		c, err := fault.Dial(context.Background(), u.String(), transport.Options{}, fault.Config{}, seeded(2))
		if err != nil {
			t.Fatal(err)
		}
		s, err := fl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("0123456789"))
		got, err := io.ReadAll(s)
		if string(got) != "01234" || !errors.Is(err, fault.ErrCut) {
			t.Errorf("conn %d: read %q, %v; want 5 bytes then ErrCut", i, got, err)
		}
		c.Close()
		s.Close()
	}
	if log.count("fault[srv#1]: read: cut after 5 bytes") != 1 || log.count("fault[srv#2]: read: cut after 5 bytes") != 1 {
		t.Errorf("log %q", log.all())
	}
}

func TestProxy(t *testing.T) {
	leakcheck.Check(t)
	// An echo server as the target.
	tl, tu, err := transport.Listen(context.Background(), "dst://127.0.0.1:0", transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer tl.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()

	var log logger
	p := &fault.Proxy{
		Listen: "dst://127.0.0.1:0",
		Target: tu.String(),
		Fault:  fault.Config{Write: fault.Rules{CorruptAt: []int64{5}}, Log: log.Log},
		Rand:   seeded(9),
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			p.Close()
		}
	}()

	// Echo through the proxy: 1 MiB comes back with one flipped bit, at 5.
	c, _, err := transport.Dial(context.Background(), p.URL().String(), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := pattern(1 << 20)
	go c.Write(data)
	got := make([]byte, len(data))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if n, at := bitDiff(got, data); n != 1 || at[0] != 5 {
		t.Errorf("%d bits differ at %v; want one at 5", n, at)
	}
	// A half-close passes through: the echo server sees EOF and closes.
	c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Errorf("after CloseWrite: %q, %v; want EOF", rest, err)
	}

	// A second conn stays open; Close of the proxy closes it.
	c2, _, err := transport.Dial(context.Background(), p.URL().String(), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write([]byte("hello"))
	buf := make([]byte, 5)
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c2, buf); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	closed = true
	if _, err := c2.Read(buf); err == nil {
		t.Error("proxied conn still open after proxy Close")
	}
	if err := p.Close(); err == nil {
		t.Error("second Close succeeded")
	}
	if _, _, err := transport.Dial(context.Background(), p.URL().String(), transport.Options{}); err == nil {
		t.Error("proxy still accepts after Close")
	}
	if log.count("fault[proxy#1]: write: corrupt: flipped bit") != 1 {
		t.Errorf("log %q", log.all())
	}
}

// runReorder writes n frames through a write-side reorder and returns the
// sequence numbers received, the stats and the log. Frames whose sequence
// number is a multiple of 10 must stay in order.
func runReorder(t *testing.T, seed uint64, n int, chunkSeed uint64) ([]int, fault.DirStats, []string) {
	t.Helper()
	client, server := memPair(t)
	var log logger
	pinned := func(f []byte) bool { return binary.BigEndian.Uint32(f[4:])%10 == 0 }
	fc := fault.Wrap(client, fault.Config{Write: fault.Rules{
		Framer: lenFramer, ReorderProb: 0.3, ReorderHold: time.Minute,
		CanReorder: func(f []byte) bool { return !pinned(f) },
	}, Log: log.Log}, seeded(seed))
	result := readAllAsync(t, server)
	if err := writeChunked(fc, frames(n), chunkSeed); err != nil {
		t.Fatal(err)
	}
	fc.Close() // sends a frame still held
	stream, err := result()
	if err != nil {
		t.Fatal(err)
	}
	return parseFrames(t, stream), fc.Stats().Write, log.all()
}

// TestReorderFrames: a reordered frame is swapped with the one that
// follows it, nothing is lost or duplicated, frames that may not move stay
// in place, and the same seed gives the same order whatever the Write
// chunking.
func TestReorderFrames(t *testing.T) {
	leakcheck.Check(t)
	const n = 300
	seqs, st, lines := runReorder(t, 11, n, 1)
	if len(seqs) != n {
		t.Fatalf("received %d frames, want %d", len(seqs), n)
	}
	swaps := 0
	for i := 0; i < n; i++ {
		switch {
		case seqs[i] == i:
		case i+1 < n && seqs[i] == i+1 && seqs[i+1] == i:
			if i%10 == 0 || (i+1)%10 == 0 {
				t.Errorf("pinned frame moved: position %d holds %d", i, seqs[i])
			}
			swaps++
			i++
		default:
			t.Fatalf("position %d holds frame %d: not an adjacent swap (%v)", i, seqs[i], seqs[max(0, i-3):min(n, i+4)])
		}
	}
	if swaps < 30 || swaps != st.Reordered {
		t.Errorf("%d swaps seen, stats %+v; want about %d and equal", swaps, st, n*3/10)
	}
	if got := strings.Count(strings.Join(lines, "\n"), "write: reorder: frame #"); got != st.Reordered+st.Unheld {
		t.Errorf("%d reorder log lines, stats %+v", got, st)
	}
	again, _, _ := runReorder(t, 11, n, 2)
	if fmt.Sprint(again) != fmt.Sprint(seqs) {
		t.Error("same seed, other chunking: another order")
	}
	other, _, _ := runReorder(t, 12, n, 1)
	if fmt.Sprint(other) == fmt.Sprint(seqs) {
		t.Error("another seed gave the same order")
	}
}

// TestReorderHoldExpires: a held frame with nothing after it goes alone
// after ReorderHold; it is never kept back indefinitely.
func TestReorderHoldExpires(t *testing.T) {
	leakcheck.Check(t)
	client, server := memPair(t)
	var log logger
	fc := fault.Wrap(client, fault.Config{Write: fault.Rules{Framer: lenFramer, ReorderProb: 1, ReorderHold: 50 * time.Millisecond}, Log: log.Log}, seeded(3))
	defer fc.Close()
	f := frames(1)[0]
	start := time.Now()
	if _, err := fc.Write(f); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(f))
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 40*time.Millisecond || !bytes.Equal(got, f) {
		t.Errorf("frame arrived after %v (want >= 50ms), intact %v", el, bytes.Equal(got, f))
	}
	if st := fc.Stats().Write; st.Unheld != 1 || st.Reordered != 0 {
		t.Errorf("stats %+v", st)
	}
	if log.count("sent alone: no frame followed within 50ms") != 1 {
		t.Errorf("log %q", log.all())
	}
}

// TestReorderReadPanics: reorder is a write-side fault of a Conn.
func TestReorderReadPanics(t *testing.T) {
	client, _ := memPair(t)
	defer func() {
		if recover() == nil {
			t.Error("Wrap accepted Read.ReorderProb")
		}
	}()
	fault.Wrap(client, fault.Config{Read: fault.Rules{Framer: lenFramer, ReorderProb: 0.5}}, nil)
}

// TestProxyReorder: a proxy reorders frames both ways (Read reorder on
// its client side) with per-conn framers; an echo target sees the
// requests swapped and the client gets every frame back exactly once.
func TestProxyReorder(t *testing.T) {
	leakcheck.Check(t)
	tl, tu, err := transport.Listen(context.Background(), "dst://127.0.0.1:0", transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer tl.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := tl.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	var log logger
	var made atomic.Int32
	newFramer := func() fault.Framer { made.Add(1); return lenFramer }
	p := &fault.Proxy{
		Listen: "dst://127.0.0.1:0",
		Target: tu.String(),
		Fault: fault.Config{
			Write: fault.Rules{NewFramer: newFramer, ReorderProb: 0.2},
			Read:  fault.Rules{NewFramer: newFramer, ReorderProb: 0.2},
			Log:   log.Log,
		},
		Rand: seeded(4),
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, _, err := transport.Dial(context.Background(), p.URL().String(), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 200
	wg.Add(1)
	go func() {
		defer wg.Done()
		writeChunked(c, frames(n), 3)
		c.(*net.TCPConn).CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	stream, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	seqs := parseFrames(t, stream)
	seen := map[int]bool{}
	moved := 0
	for i, s := range seqs {
		if seen[s] {
			t.Fatalf("frame %d twice", s)
		}
		seen[s] = true
		if s != i {
			moved++
		}
	}
	if len(seqs) != n || moved == 0 {
		t.Errorf("%d frames back, %d out of place", len(seqs), moved)
	}
	if log.count("fault[proxy#1]: write: reorder: frame") == 0 || log.count("fault[proxy#1 replies]: write: reorder: frame") == 0 {
		t.Errorf("no reorder both ways in the log: %q", log.all())
	}
	// Read-side framer (target conn, unused for reorder), write-side
	// framer, and the replies conn's write-side framer.
	if made.Load() < 3 {
		t.Errorf("NewFramer called %d times, want one per conn and direction", made.Load())
	}
}
