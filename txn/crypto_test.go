package txn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dst-dev/dst/crypto"
	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
	"github.com/dst-dev/dst/transport/fault"
)

// testKey returns a key (the same for the same seed).
func testKey(seed byte) *crypto.Key {
	var k crypto.Key
	for i := range k {
		k[i] = seed + byte(i)*7 + 1
	}
	return &k
}

func cryptoCfg(s crypto.Suite) crypto.Config {
	c := crypto.Config{Suite: s}
	if s.Keyed() {
		c.Key = testKey(1)
	}
	return c
}

// TestClientCryptoRoundTrip: every suite carries data both ways, intact,
// over TCP, through resends on a new connection (the exporter restarts
// reading on each), and the frames really carry trailers (plaintext never
// appears on the wire under AEAD).
func TestClientCryptoRoundTrip(t *testing.T) {
	for _, pooled := range []bool{false, true} {
		for _, s := range crypto.Suites {
			t.Run(fmt.Sprintf("%v/pool=%v", s, pooled), func(t *testing.T) { testCryptoRoundTrip(t, s, pooled) })
		}
	}
}

func testCryptoRoundTrip(t *testing.T, s crypto.Suite, pooled bool) {
	path := exporttest.File(t, 4<<20)
	cfg := exportCfg(path)
	cfg.Crypto = cryptoCfg(s)
	var cpool *crypto.Pool
	if pooled {
		// Each side seals its large payloads on a pool of its own.
		cfg.CryptoPool = crypto.NewPool(crypto.PoolConfig{Min: 1, Max: 2})
		cpool = crypto.NewPool(crypto.PoolConfig{Min: 1, Max: 2})
		t.Cleanup(cfg.CryptoPool.Close)
		t.Cleanup(cpool.Close)
	}
	srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	// A tap between client and exporter records what the exporter
	// receives.
	tap := startTap(t, addr)
	opts := fastOpts(tap.url + "/disk")
	opts.Crypto = cryptoCfg(s)
	opts.CryptoPool = cpool
	c, err := Dial(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Welcome(); int(w.TagSize) != s.TagSize() {
		t.Fatalf("WELCOME TAG_SIZE %d, want %d", w.TagSize, s.TagSize())
	}
	d := newBlockDev(c)
	secret := bytes.Repeat([]byte("SECRET-PLAINTEXT"), 8<<10) // 128 KiB
	small := bytes.Repeat([]byte("small-4k"), 512)
	if err := d.write(1<<20, secret); err != nil {
		t.Fatal(err)
	}
	if err := d.write(0, small); err != nil {
		t.Fatal(err)
	}
	if err := d.do(wire.OpFlush, 0, 0, 0, nil); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		off  uint64
		want []byte
	}{{1 << 20, secret}, {0, small}} {
		got, err := d.read(x.off, len(x.want))
		if err != nil || !bytes.Equal(got, x.want) {
			t.Fatalf("read back at %d: %v equal %v", x.off, err, bytes.Equal(got, x.want))
		}
	}
	if err := c.Close(ctx5s(t)); err != nil {
		t.Fatalf("clean detach: %v", err)
	}
	disk, _ := os.ReadFile(path)
	if !bytes.Equal(disk[1<<20:1<<20+len(secret)], secret) {
		t.Fatal("exported file does not hold the data")
	}
	up, down := tap.recorded()
	for _, b := range [][]byte{up, down} {
		if got := bytes.Contains(b, []byte("SECRET-PLAINTEXT")); got == s.Keyed() {
			t.Fatalf("%v: plaintext on the wire: %v", s, got)
		}
	}
	if st := srv.CryptoStats(); st != (export.CryptoStats{}) {
		t.Fatalf("crypto stats after a clean run: %+v", st)
	}
}

// tap forwards one TCP connection at a time to target and records both
// directions.
type tap struct {
	url      string
	mu       sync.Mutex
	up, down bytes.Buffer
	hold     bool // replies wait (not lost) while set
	downN    int64
	flipAt   int64 // flip a bit of the reply byte at this offset, once (0: none)
	conns    []net.Conn
}

// holdReplies holds the exporter's bytes back (on) or lets them through.
func (tp *tap) holdReplies(on bool) {
	tp.mu.Lock()
	tp.hold = on
	tp.mu.Unlock()
}

func startTap(t *testing.T, target string) *tap {
	t.Helper()
	u, err := transport.ParseURL(target)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{url: "dst://" + l.Addr().String()}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", u.Address)
			if err != nil {
				c.Close()
				continue
			}
			tp.mu.Lock()
			tp.conns = append(tp.conns, c, s)
			tp.mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); tp.copy(s, c, &tp.up); s.Close() }()
			go func() { defer wg.Done(); tp.copy(c, s, &tp.down); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		tp.cut()
		wg.Wait()
	})
	return tp
}

func (tp *tap) copy(dst, src net.Conn, rec *bytes.Buffer) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			tp.mu.Lock()
			rec.Write(buf[:n])
			tp.mu.Unlock()
			if rec == &tp.down {
				tp.mu.Lock()
				if tp.flipAt > 0 && tp.flipAt >= tp.downN && tp.flipAt < tp.downN+int64(n) {
					buf[tp.flipAt-tp.downN] ^= 0x10
					tp.flipAt = 0
				}
				tp.downN += int64(n)
				tp.mu.Unlock()
			}
			for rec == &tp.down {
				tp.mu.Lock()
				h := tp.hold
				tp.mu.Unlock()
				if !h {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// flipDown flips one bit of the off-th byte the exporter sends from now on.
func (tp *tap) flipDown(off int64) {
	tp.mu.Lock()
	tp.flipAt = tp.downN + off
	tp.mu.Unlock()
}

// cut closes every connection passing through the tap.
func (tp *tap) cut() {
	tp.mu.Lock()
	cs := tp.conns
	tp.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

func (tp *tap) recorded() (up, down []byte) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return bytes.Clone(tp.up.Bytes()), bytes.Clone(tp.down.Bytes())
}

// TestClientCryptoRefusals: a wrong key, different suites, or crypto on
// one side only fail the handshake with a message saying so, on both
// sides, and nothing is written.
func TestClientCryptoRefusals(t *testing.T) {
	cases := []struct {
		name       string
		exp, cli   crypto.Config
		code       wire.RefuseCode // 0: not a REFUSE but a failed key confirmation
		clientSays string
		serverLog  string
	}{
		{"wrong key", crypto.Config{Suite: crypto.AES256GCM, Key: testKey(1)}, crypto.Config{Suite: crypto.AES256GCM, Key: testKey(2)}, 0,
			"key confirmation failed: the exporter does not hold the same key", "handshake failed"},
		{"other cipher", crypto.Config{Suite: crypto.ChaCha20Poly1305, Key: testKey(1)}, crypto.Config{Suite: crypto.AES256GCM, Key: testKey(1)}, wire.RefuseUnsupported,
			"the client asks for aes-256-gcm, this exporter is configured for chacha20-poly1305", "handshake refused"},
		{"other checksum", crypto.Config{Suite: crypto.BLAKE3}, crypto.Config{Suite: crypto.CRC32C}, wire.RefuseUnsupported,
			"the client asks for crc32c, this exporter is configured for blake3", "handshake refused"},
		{"checksum vs cipher", crypto.Config{Suite: crypto.SHA256}, crypto.Config{Suite: crypto.AES256GCM, Key: testKey(1)}, wire.RefuseUnsupported,
			"the client asks for aes-256-gcm, this exporter is configured for sha256", "handshake refused"},
		{"client without crypto", crypto.Config{Suite: crypto.ChaCha20Poly1305, Key: testKey(1)}, crypto.Config{}, wire.RefuseUnsupported,
			"this exporter requires chacha20-poly1305; the client offered no crypto", "handshake refused"},
		{"exporter without crypto", crypto.Config{}, crypto.Config{Suite: crypto.SHA256}, wire.RefuseUnsupported,
			"the client asks for sha256, but this exporter runs without crypto", "handshake refused"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := exporttest.File(t, 1<<20)
			before, _ := os.ReadFile(path)
			cfg := exportCfg(path)
			cfg.Crypto = tc.exp
			log, logs := exporttest.ObservedLogger(t)
			cfg.Log = log
			srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
			opts := fastOpts(addr + "/disk")
			opts.Crypto = tc.cli
			_, err := Dial(context.Background(), opts)
			if err == nil || !strings.Contains(err.Error(), tc.clientSays) {
				t.Fatalf("client error %v, want it to say %q", err, tc.clientSays)
			}
			var re *wire.RefuseError
			if tc.code != 0 {
				if !errors.As(err, &re) || re.Code != tc.code {
					t.Fatalf("client error %v, want REFUSE %v", err, tc.code)
				}
			} else if !errors.Is(err, crypto.ErrKeyMismatch) {
				t.Fatalf("client error %v does not match ErrKeyMismatch", err)
			}
			e := exporttest.WaitLog(t, logs, tc.serverLog, 2*time.Second)
			all := fmt.Sprint(e.ContextMap())
			if tc.code != 0 && !strings.Contains(all, tc.clientSays) {
				t.Fatalf("exporter log %q %v does not give the reason %q", e.Message, all, tc.clientSays)
			}
			if tc.code == 0 && !strings.Contains(all, "does not hold this exporter's key") {
				t.Fatalf("exporter log %q %v does not blame the key", e.Message, all)
			}
			if st := srv.CryptoStats(); st.Refused != 1 {
				t.Fatalf("exporter counted %d crypto refusals, want 1", st.Refused)
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(before, after) {
				t.Fatal("the export changed")
			}
		})
	}
}

// model is a disk image the test expects, block by block.
type model struct {
	bs   int
	data []byte
}

// writeRandom writes n random blocks through d, concurrently (depth
// writers), and records them in m.
func (m *model) writeRandom(t *testing.T, d *blockDev, rng *rand.Rand, n, depth int) {
	t.Helper()
	blocks := len(m.data) / m.bs
	type w struct {
		off  int
		data []byte
	}
	ws := make([]w, n)
	used := map[int]bool{}
	for i := range ws {
		b := rng.IntN(blocks)
		for used[b] {
			b = (b + 1) % blocks
		}
		used[b] = true // one write per block: no order between writers
		buf := make([]byte, m.bs)
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		ws[i] = w{b * m.bs, buf}
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, depth)
	for _, x := range ws {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := d.write(uint64(x.off), x.data); err != nil {
				errs <- fmt.Errorf("write at %d: %w", x.off, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, x := range ws {
		copy(m.data[x.off:], x.data)
	}
}

// TestClientChecksumCorruption: a proxy flips bits in both directions.
// Every write and read still succeeds with the right data, the export
// never holds a corrupted block, and frames were dropped by checksum
// (counted on the exporter or the client) and resent.
func TestClientChecksumCorruption(t *testing.T) {
	for _, s := range []crypto.Suite{crypto.CRC32C, crypto.SHA256, crypto.BLAKE3} {
		t.Run(s.String(), func(t *testing.T) {
			const blocks, bs = 256, 4096
			path := exporttest.File(t, blocks*bs)
			cfg := exportCfg(path)
			cfg.Crypto = crypto.Config{Suite: s}
			srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
			p := &fault.Proxy{Listen: "dst://127.0.0.1:0", Target: addr, Rand: rand.New(rand.NewPCG(uint64(s), 3)),
				Fault: fault.Config{Read: fault.Rules{CorruptProb: 0.1}, Write: fault.Rules{CorruptProb: 0.1}}}
			if err := p.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			opts := fastOpts(p.URL().String() + "/disk")
			opts.Crypto = crypto.Config{Suite: s}
			opts.Timeout = 100 * time.Millisecond
			opts.Retries = 60
			c, err := dialRetry(opts)
			if err != nil {
				t.Fatal(err)
			}
			d := newBlockDev(c)
			m := &model{bs: bs, data: make([]byte, blocks*bs)}
			rng := rand.New(rand.NewPCG(uint64(s), 9))
			m.writeRandom(t, d, rng, 120, 16)
			for b := 0; b < blocks; b += 8 {
				got, err := d.read(uint64(b*bs), 8*bs)
				if err != nil {
					t.Fatalf("read block %d: %v", b, err)
				}
				if !bytes.Equal(got, m.data[b*bs:(b+8)*bs]) {
					t.Fatalf("read of blocks %d..%d returned other data", b, b+7)
				}
			}
			cs, ss := c.Stats(), srv.CryptoStats()
			c.Close(ctx5s(t))
			disk, _ := os.ReadFile(path)
			if !bytes.Equal(disk, m.data) {
				t.Fatal("the export does not hold exactly what was written")
			}
			t.Logf("%v: dropped by checksum: exporter %d, client %d; auth %d; resent %d, reconnects %d",
				s, ss.Corrupt, cs.Corrupt, ss.Auth, cs.Resent, cs.Reconnects)
			if ss.Corrupt+cs.Corrupt == 0 {
				t.Fatalf("no frame was dropped by checksum on one side (exporter %d, client %d): the test did not test", ss.Corrupt, cs.Corrupt)
			}
			if ss.Auth != 0 {
				t.Fatalf("authentication failures with a checksum suite: %d", ss.Auth)
			}
		})
	}
}

// TestClientCipherTamper: under AEAD, a flipped bit closes the
// connection (the frame fails authentication); the client reconnects,
// resends, and the data ends intact.
//
// The pooled variant writes and reads 64 KiB blocks with a crypto pool on
// each side, so that connections die while workers seal a batch.
func TestClientCipherTamper(t *testing.T) {
	for _, pooled := range []bool{false, true} {
		for _, s := range []crypto.Suite{crypto.AES256GCM, crypto.ChaCha20Poly1305} {
			t.Run(fmt.Sprintf("%v/pool=%v", s, pooled), func(t *testing.T) { testCipherTamper(t, s, pooled) })
		}
	}
}

func testCipherTamper(t *testing.T, s crypto.Suite, pooled bool) {
	blocks, bs := 128, 4096
	if pooled {
		blocks, bs = 16, 64<<10
	}
	path := exporttest.File(t, int64(blocks*bs))
	cfg := exportCfg(path)
	cfg.Crypto = cryptoCfg(s)
	var cpool *crypto.Pool
	if pooled {
		cfg.CryptoPool = crypto.NewPool(crypto.PoolConfig{Min: 1, Max: 2})
		cpool = crypto.NewPool(crypto.PoolConfig{Min: 1, Max: 2})
		t.Cleanup(cfg.CryptoPool.Close)
		t.Cleanup(cpool.Close)
	}
	srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	prob := 0.05
	if pooled {
		prob = 0.2 // fewer, larger frames
	}
	p := &fault.Proxy{Listen: "dst://127.0.0.1:0", Target: addr, Rand: rand.New(rand.NewPCG(uint64(s), 3)),
		Fault: fault.Config{Read: fault.Rules{CorruptProb: prob}, Write: fault.Rules{CorruptProb: prob}}}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	opts := fastOpts(p.URL().String() + "/disk")
	opts.Crypto = cryptoCfg(s)
	opts.CryptoPool = cpool
	opts.Retries = 60
	c, err := dialRetry(opts)
	if err != nil {
		t.Fatal(err)
	}
	d := newBlockDev(c)
	m := &model{bs: bs, data: make([]byte, blocks*bs)}
	m.writeRandom(t, d, rand.New(rand.NewPCG(uint64(s), 9)), blocks*5/8, 8)
	for b := 0; b < blocks; b += 8 {
		got, err := d.read(uint64(b*bs), 8*bs)
		if err != nil {
			t.Fatalf("read block %d: %v", b, err)
		}
		if !bytes.Equal(got, m.data[b*bs:(b+8)*bs]) {
			t.Fatalf("read of blocks %d..%d returned other data", b, b+7)
		}
	}
	cs, ss := c.Stats(), srv.CryptoStats()
	c.Close(ctx5s(t))
	disk, _ := os.ReadFile(path)
	if !bytes.Equal(disk, m.data) {
		t.Fatal("the export does not hold exactly what was written")
	}
	t.Logf("%v: auth failures: exporter %d, client %d; checksum drops %d; reconnects %d, resent %d",
		s, ss.Auth, cs.Corrupt, ss.Corrupt, cs.Reconnects, cs.Resent)
	if ss.Auth+cs.Corrupt == 0 {
		t.Fatal("no authentication failure: the test did not test")
	}
	if cs.Reconnects == 0 {
		t.Fatal("an authentication failure did not close the connection")
	}
	if ss.Corrupt != 0 {
		t.Fatalf("checksum drops under AEAD: %d", ss.Corrupt)
	}
}

// TestCryptoNoncesNeverReused: every frame the client seals takes the next
// number of its connection's counter; a transaction resent on the same
// connection (its reply held back past the timeout) and on a new one
// (after a cut) is sealed again under a new number, never an old one, and
// each connection has its own session (keys).
func TestCryptoNoncesNeverReused(t *testing.T) {
	for _, s := range []crypto.Suite{crypto.AES256GCM, crypto.ChaCha20Poly1305, crypto.CRC32C} {
		t.Run(s.String(), func(t *testing.T) {
			path := exporttest.File(t, 1<<20)
			cfg := exportCfg(path)
			cfg.Crypto = cryptoCfg(s)
			_, addr := exporttest.Start(t, cfg, exporttest.TCP4)
			tp := startTap(t, addr)
			type sealed struct {
				cs  *crypto.Session
				seq uint64
				id  uint64
				op  wire.Op
			}
			var mu sync.Mutex
			var log []sealed
			opts := fastOpts(tp.url + "/disk")
			opts.Crypto = cryptoCfg(s)
			opts.Timeout, opts.Ping = 100*time.Millisecond, 5*time.Second
			opts.onSeal = func(cs *crypto.Session, seq uint64, hdr []byte) {
				r, err := wire.ParseRequest(hdr, wire.MaxTransferLimit)
				if err != nil {
					t.Errorf("sealed a bad header: %v", err)
				}
				mu.Lock()
				log = append(log, sealed{cs, seq, r.ID, r.Op})
				mu.Unlock()
			}
			c, err := Dial(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			d := newBlockDev(c)
			data := bytes.Repeat([]byte{7}, 8192)
			if err := d.write(0, data); err != nil {
				t.Fatal(err)
			}
			// Resends on the same connection: the replies wait in the tap
			// for 4 timeouts.
			tp.holdReplies(true)
			done := make(chan error, 1)
			go func() { done <- d.write(8192, data) }()
			time.Sleep(450 * time.Millisecond)
			tp.holdReplies(false)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			// Resends on a new connection: the exporter side of the tap is
			// cut while a write waits for its reply.
			tp.holdReplies(true)
			go func() { done <- d.write(16384, data) }()
			time.Sleep(150 * time.Millisecond)
			tp.cut()
			tp.holdReplies(false)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			c.Close(ctx5s(t))
			mu.Lock()
			defer mu.Unlock()
			next := map[*crypto.Session]uint64{}
			sends := map[uint64][]sealed{}
			for _, x := range log {
				if x.seq != next[x.cs] {
					t.Fatalf("frame number %d on its connection, want %d: a counter skipped or went back", x.seq, next[x.cs])
				}
				next[x.cs]++
				if x.op == wire.OpWrite {
					sends[x.id] = append(sends[x.id], x)
				}
			}
			if len(next) < 2 {
				t.Fatalf("%d connections, want a reconnect", len(next))
			}
			var sameConn, newConn bool
			for id, xs := range sends {
				for i := 1; i < len(xs); i++ {
					a, b := xs[i-1], xs[i]
					if a.cs == b.cs {
						sameConn = true
						if b.seq <= a.seq {
							t.Fatalf("id %d resent under frame number %d after %d", id, b.seq, a.seq)
						}
					} else {
						newConn = true
					}
				}
			}
			if !sameConn || !newConn {
				t.Fatalf("resends on the same connection %v, on a new one %v: want both", sameConn, newConn)
			}
		})
	}
}

// dialRetry dials through a corrupting proxy: the handshake itself may be
// hit.
func dialRetry(opts Options) (c *Client, err error) {
	for range 20 {
		if c, err = Dial(context.Background(), opts); err == nil {
			return c, nil
		}
	}
	return nil, err
}

// TestClientReplyTamper: a bit flipped in a READ reply's payload fails
// its check on the client (counted in Stats.Corrupt). Under AEAD the
// client closes the connection, reconnects and reads again; under a
// checksum it drops the frame, keeps the connection and resends after
// its timeout. Either way the read completes with the right data.
func TestClientReplyTamper(t *testing.T) {
	for _, s := range crypto.Suites {
		t.Run(s.String(), func(t *testing.T) {
			path := exporttest.File(t, 1<<20)
			cfg := exportCfg(path)
			cfg.Crypto = cryptoCfg(s)
			_, addr := exporttest.Start(t, cfg, exporttest.TCP4)
			tp := startTap(t, addr)
			opts := fastOpts(tp.url + "/disk")
			opts.Crypto = cryptoCfg(s)
			c, err := Dial(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx5s(t))
			d := newBlockDev(c)
			data := bytes.Repeat([]byte("0123456789abcdef"), 4096)
			if err := d.write(0, data); err != nil {
				t.Fatal(err)
			}
			tp.flipDown(wire.ReplyHeaderSize + 1000) // in the next reply's payload
			got, err := d.read(0, len(data))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read after a tampered reply: %v, equal %v", err, bytes.Equal(got, data))
			}
			want := uint64(0)
			if s.Keyed() {
				want = 1
			}
			if st := c.Stats(); st.Corrupt != 1 || st.Reconnects != want || st.Resent == 0 {
				t.Fatalf("stats %+v: want one reply frame lost, a resend and %d reconnects", st, want)
			}
		})
	}
}

// TestCryptoBatchesPushed: 64 WRITEs of 4 KiB submitted at once leave in one
// batch that the client writes 32 KiB at a time as it seals it, and 64 READs
// submitted at once come back in batches the exporter writes likewise
// (pushChunk; unless the thread waits for a CPU). Frames keep their numbers
// in queueing order: under AEAD a frame out of order would fail and close
// the connection. The data reads back intact, nothing was lost or resent.
func TestCryptoBatchesPushed(t *testing.T) {
	for _, s := range []crypto.Suite{crypto.CRC32C, crypto.AES256GCM, crypto.ChaCha20Poly1305} {
		t.Run(s.String(), func(t *testing.T) {
			const n, bs = 64, 4096
			path := exporttest.File(t, 4<<20)
			cfg := exportCfg(path)
			cfg.Crypto = cryptoCfg(s)
			srv, addr := exporttest.Start(t, cfg, exporttest.TCP4)
			opts := fastOpts(addr + "/disk")
			opts.Crypto = cryptoCfg(s)
			opts.Capacity = 2 * n
			// No timeout on a loaded machine: nothing may be resent.
			opts.Timeout, opts.Ping = 10*time.Second, 2*time.Second
			c, err := Dial(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx5s(t))
			done := make(chan Completion, n)
			c.SetDeliver(func(cs []Completion) {
				for _, x := range cs {
					done <- x
				}
			})
			rng := rand.New(rand.NewPCG(7, uint64(s)))
			want := make([]byte, n*bs)
			for i := range want {
				want[i] = byte(rng.Uint32())
			}
			got := make([]byte, n*bs)
			for _, op := range []wire.Op{wire.OpWrite, wire.OpRead} {
				buf := want
				if op == wire.OpRead {
					buf = got
				}
				for h := range n {
					// Every other block: no two requests merge.
					c.Submit(Handle(h), op, 0, uint64(2*h*bs), bs, buf[h*bs:(h+1)*bs])
				}
				for range n {
					select {
					case x := <-done:
						if x.Err != 0 {
							t.Fatalf("%v %d: %v", op, x.Handle, x.Err)
						}
					case <-time.After(10 * time.Second):
						t.Fatalf("%v: no completion in 10 s", op)
					}
				}
			}
			if !bytes.Equal(got, want) {
				t.Fatal("read back differs")
			}
			if st := c.Stats(); st.Corrupt != 0 || st.Resent != 0 || st.Reconnects != 0 {
				t.Fatalf("client stats %+v", st)
			}
			if st := srv.CryptoStats(); st != (export.CryptoStats{}) {
				t.Fatalf("exporter crypto stats %+v", st)
			}
		})
	}
}
