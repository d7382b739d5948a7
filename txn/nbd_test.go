package txn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/nbd"
	"github.com/dst-dev/dst/internal/wire"
)

// The NBD client against real servers: DST's own NBD listener and, where
// installed (scripts/deps.sh installs them), nbdkit, qemu-nbd and
// nbd-server.

// nbdPeer starts a server for one test; restart (if set) kills it and
// starts it again on the same address with the same data.
type nbdPeer struct {
	url     string
	stop    func()
	restart func(t *testing.T)
}

type nbdServer struct {
	name  string
	tools []string
	// file: whether the data lives in a file (survives a restart)
	file  bool
	start func(t *testing.T, img string) *nbdPeer
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// waitListen waits until something accepts connections at addr.
func waitListen(t *testing.T, network, addr string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if c, err := net.Dial(network, addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s %s after 5 s", network, addr)
}

// process runs a server in the foreground; kill stops it and waits.
type process struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

func startProcess(t *testing.T, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(name, args...)}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return p
}

func (p *process) kill() {
	p.cmd.Process.Kill() //nolint:errcheck // it may have exited
	p.cmd.Wait()         //nolint:errcheck // killed
}

// restartable makes an nbdPeer from a function that starts the server
// process and returns it.
func restartable(t *testing.T, url, network, addr string, run func() *process) *nbdPeer {
	var mu sync.Mutex
	p := run()
	waitListen(t, network, addr)
	peer := &nbdPeer{url: url}
	peer.stop = func() {
		mu.Lock()
		defer mu.Unlock()
		p.kill()
	}
	peer.restart = func(t *testing.T) {
		mu.Lock()
		p.kill()
		p = run()
		mu.Unlock()
		waitListen(t, network, addr)
	}
	t.Cleanup(peer.stop)
	return peer
}

var nbdServers = []nbdServer{
	{name: "dst", file: true, start: func(t *testing.T, img string) *nbdPeer {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cfg := exportCfg(img)
		cfg.Log = exporttest.TestLogger(t)
		s, err := export.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.ServeNBD(context.Background(), l) }()
		var once sync.Once
		stop := func() {
			once.Do(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				s.Shutdown(ctx) //nolint:errcheck // the test checks the I/O, not the goodbye
				<-done
			})
		}
		t.Cleanup(stop)
		return &nbdPeer{url: "nbd://" + l.Addr().String() + "/disk", stop: stop}
	}},
	{name: "nbdkit-memory", tools: []string{"nbdkit"}, start: func(t *testing.T, _ string) *nbdPeer {
		sock := filepath.Join(t.TempDir(), "nbdkit.sock")
		return restartable(t, "nbd+unix:///?socket="+sock, "unix", sock, func() *process {
			os.Remove(sock)
			return startProcess(t, "nbdkit", "-f", "--exit-with-parent", "-U", sock, "memory", "4M")
		})
	}},
	{name: "nbdkit-file", tools: []string{"nbdkit"}, file: true, start: func(t *testing.T, img string) *nbdPeer {
		port := freePort(t)
		return restartable(t, "nbd://127.0.0.1:"+port, "tcp", "127.0.0.1:"+port, func() *process {
			return startProcess(t, "nbdkit", "-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", port, "file", "file="+img)
		})
	}},
	{name: "qemu-nbd", tools: []string{"qemu-nbd"}, file: true, start: func(t *testing.T, img string) *nbdPeer {
		sock := filepath.Join(t.TempDir(), "qemu-nbd.sock")
		return restartable(t, "nbd+unix:///disk?socket="+sock, "unix", sock, func() *process {
			os.Remove(sock)
			return startProcess(t, "qemu-nbd", "-f", "raw", "--cache=none", "--aio=threads", "-t", "-e", "8", "-x", "disk", "-k", sock, img)
		})
	}},
	{name: "nbd-server", tools: []string{"nbd-server"}, file: true, start: func(t *testing.T, img string) *nbdPeer {
		port := freePort(t)
		dir := t.TempDir()
		conf := filepath.Join(dir, "nbd-server.conf")
		if err := os.WriteFile(conf, []byte(fmt.Sprintf("[generic]\n\tlistenaddr = 127.0.0.1\n\tport = %s\n[disk]\n\texportname = %s\n", port, img)), 0o600); err != nil {
			t.Fatal(err)
		}
		// nbd-server daemonizes; -d keeps it in the foreground but then
		// it serves one connection only, so the pid comes from its file.
		pidf := filepath.Join(dir, "pid")
		var pid int
		run := func() {
			os.Remove(pidf)
			out, err := exec.Command("nbd-server", "-C", conf, "-p", pidf).CombinedOutput()
			if err != nil {
				t.Fatalf("nbd-server: %v: %s", err, out)
			}
			for i := 0; i < 100; i++ {
				if b, err := os.ReadFile(pidf); err == nil && len(b) > 0 {
					pid, _ = strconv.Atoi(string(bytes.TrimSpace(b)))
					if pid > 0 {
						break
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
			if pid <= 0 {
				t.Fatal("nbd-server wrote no pid file")
			}
		}
		kill := func() {
			// Its children serve the connections: kill the group it leads.
			syscall.Kill(-pid, syscall.SIGKILL) //nolint:errcheck // may be gone
			syscall.Kill(pid, syscall.SIGKILL)  //nolint:errcheck // may be gone
			for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
		run()
		waitListen(t, "tcp", "127.0.0.1:"+port)
		p := &nbdPeer{url: "nbd://127.0.0.1:" + port + "/disk", stop: kill}
		p.restart = func(t *testing.T) {
			kill()
			run()
			waitListen(t, "tcp", "127.0.0.1:"+port)
		}
		t.Cleanup(kill)
		return p
	}},
}

func (s nbdServer) skipUnlessInstalled(t *testing.T) {
	for _, tool := range s.tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/deps.sh installs it)", tool)
		}
	}
}

// nbdModel is what the export should hold, for checking reads.
type nbdModel struct {
	mu   sync.Mutex
	data []byte
}

func (m *nbdModel) write(off uint64, b []byte) {
	m.mu.Lock()
	copy(m.data[off:], b)
	m.mu.Unlock()
}

func (m *nbdModel) check(t *testing.T, d *blockDev, what string) {
	t.Helper()
	const chunk = 256 << 10
	for off := 0; off < len(m.data); off += chunk {
		got, err := d.read(uint64(off), chunk)
		if err != nil {
			t.Fatalf("%s: read back at %d: %v", what, off, err)
		}
		if i := firstDiff(got, m.data[off:off+chunk]); i >= 0 {
			t.Fatalf("%s: byte %d reads %#x, want %#x", what, off+i, got[i], m.data[off+i])
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// randomWrites writes n random 4k..64k blocks from depth goroutines.
func randomWrites(t *testing.T, d *blockDev, m *nbdModel, seed uint64, n, depth int) {
	t.Helper()
	size := len(m.data)
	var wg sync.WaitGroup
	errs := make(chan error, depth)
	// Each goroutine owns a stripe, so that no two writes in flight
	// overlap (their order would be undefined) and the nbdModel stays exact.
	stripe := size / depth
	for g := 0; g < depth; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(g)))
			for i := 0; i < n/depth; i++ {
				l := 4096 * (1 + r.IntN(16))
				off := g*stripe + 4096*r.IntN((stripe-l)/4096+1)
				b := make([]byte, l)
				for j := range b {
					b[j] = byte(r.Uint32())
				}
				var flags wire.Flags
				if i%7 == 0 {
					flags = wire.FlagFUA
				}
				if err := d.do(wire.OpWrite, flags, uint64(off), uint32(l), b); err != nil {
					errs <- fmt.Errorf("write %d+%d: %w", off, l, err)
					return
				}
				m.write(uint64(off), b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestNBDClientPeers(t *testing.T) {
	for _, s := range nbdServers {
		t.Run(s.name, func(t *testing.T) {
			s.skipUnlessInstalled(t)
			const size = 4 << 20
			img := exporttest.File(t, size)
			p := s.start(t, img)
			o := fastOpts(p.url)
			// nbd-server's parent can take seconds of CPU before it greets
			// its first client on a loaded machine.
			o.HandshakeTimeout = 10 * time.Second
			c, err := Dial(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			w := c.Welcome()
			if w.Size != size || w.ReadOnly || w.LogicalBlock < 512 || w.MaxTransfer < 64<<10 {
				t.Fatalf("export described as %+v", w)
			}
			t.Logf("%s: block %d/%d, max %d, features %v", p.url, w.LogicalBlock, w.PhysicalBlock, w.MaxTransfer, w.Features)
			d := newBlockDev(c)
			m := &nbdModel{data: make([]byte, size)}
			randomWrites(t, d, m, 1, 256, 16)
			if w.Features&wire.FeatFlush != 0 {
				if err := d.do(wire.OpFlush, 0, 0, 0, nil); err != nil {
					t.Fatalf("flush: %v", err)
				}
			}
			m.check(t, d, "after writes")
			if w.Features&wire.FeatWriteZeroes != 0 {
				for _, f := range []wire.Flags{0, wire.FlagNoUnmap} {
					if err := d.do(wire.OpWriteZeroes, f, 64<<10, 128<<10, nil); err != nil {
						t.Fatalf("write zeroes (flags %v): %v", f, err)
					}
				}
				m.write(64<<10, make([]byte, 128<<10))
				m.check(t, d, "after write zeroes")
			}
			if w.Features&wire.FeatDiscard != 0 {
				// What a trimmed range reads is up to the server: only
				// the request's success and the data around it are
				// checked.
				if err := d.do(wire.OpDiscard, 0, 1<<20, 256<<10, nil); err != nil {
					t.Fatalf("trim: %v", err)
				}
				got, err := d.read(1<<20+256<<10, 4096)
				if err != nil || !bytes.Equal(got, m.data[1<<20+256<<10:][:4096]) {
					t.Fatalf("data after the trimmed range: %v", err)
				}
			}
			st := c.Stats()
			if st.Failed != 0 || st.Reconnects != 0 {
				t.Fatalf("stats %+v", st)
			}
			if s.file {
				// The data reached the server's file, not just its cache.
				c.Close(context.Background())
				p.stop()
				b, err := os.ReadFile(img)
				if err != nil {
					t.Fatal(err)
				}
				if i := firstDiff(b, m.data); i >= 0 && w.Features&wire.FeatDiscard == 0 {
					t.Fatalf("file byte %d is %#x, want %#x", i, b[i], m.data[i])
				}
			}
		})
	}
}

// TestNBDClientServerRestart kills the server in the middle of writes and
// starts it again: every request completes without error once it is back
// (reconnect and resend), and the data is what was written.
func TestNBDClientServerRestart(t *testing.T) {
	for _, s := range nbdServers {
		if !s.file || s.name == "dst" {
			continue // the data must survive the restart
		}
		t.Run(s.name, func(t *testing.T) {
			s.skipUnlessInstalled(t)
			const size = 4 << 20
			img := exporttest.File(t, size)
			p := s.start(t, img)
			o := fastOpts(p.url)
			o.Timeout, o.Retries = 500*time.Millisecond, 40
			o.HandshakeTimeout = 10 * time.Second
			c, err := Dial(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			d := newBlockDev(c)
			m := &nbdModel{data: make([]byte, size)}
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; i < 3; i++ {
					time.Sleep(150 * time.Millisecond)
					p.restart(t)
				}
			}()
			for i := 0; ; i++ {
				randomWrites(t, d, m, uint64(10+i), 64, 8)
				select {
				case <-done:
				default:
					continue
				}
				break
			}
			m.check(t, d, "after restarts")
			st := c.Stats()
			t.Logf("%+v", st)
			if st.Reconnects < 1 || st.Failed != 0 {
				t.Fatalf("want reconnects and no failure: %+v", st)
			}
		})
	}
}

// TestNBDClientErrors: per-request errors from the server reach the
// caller and leave the connection up; a read-only export refuses writes.
func TestNBDClientErrors(t *testing.T) {
	if _, err := exec.LookPath("nbdkit"); err != nil {
		t.Skip("nbdkit is not installed (scripts/deps.sh installs it)")
	}
	sock := filepath.Join(t.TempDir(), "s")
	p := startProcess(t, "nbdkit", "-f", "--exit-with-parent", "-U", sock, "--filter=error", "memory", "1M",
		"error-pwrite=ENOSPC", "error-pwrite-rate=100%", "error-pwrite-file="+sock+".fail")
	defer p.kill()
	waitListen(t, "unix", sock)
	c, err := Dial(context.Background(), fastOpts("nbd+unix:///?socket="+sock))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	d := newBlockDev(c)
	buf := bytes.Repeat([]byte{7}, 8192)
	if err := d.write(0, buf); err != nil {
		t.Fatalf("write before errors: %v", err)
	}
	if err := os.WriteFile(sock+".fail", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.write(8192, buf); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write with the error filter on: %v, want ENOSPC", err)
	}
	os.Remove(sock + ".fail")
	got, err := d.read(0, 16384)
	if err != nil || !bytes.Equal(got[:8192], buf) || !bytes.Equal(got[8192:], make([]byte, 8192)) {
		t.Fatalf("read after the error: %v", err)
	}
	if st := c.Stats(); st.Reconnects != 0 || st.Failed != 1 {
		t.Fatalf("one failure and the same connection: %+v", st)
	}

	ro := filepath.Join(t.TempDir(), "ro")
	p2 := startProcess(t, "nbdkit", "-f", "--exit-with-parent", "-r", "-U", ro, "memory", "1M")
	defer p2.kill()
	waitListen(t, "unix", ro)
	c2, err := Dial(context.Background(), fastOpts("nbd+unix:///?socket="+ro))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(context.Background())
	if !c2.Welcome().ReadOnly {
		t.Fatal("a read-only export is not described as read-only")
	}
}

// fakeNBD is a scripted NBD server for the states real ones do not reach
// on demand. After each connection's handshake, answer decides what to do
// with each request of connection n: reply with errno (0: success, READ
// data as zeroes), or not at all (ok false). It also records, per
// connection, the cookies received.
type fakeNBD struct {
	mu      sync.Mutex
	cookies [][]uint64
	answer  func(n int, r nbd.Request) (errno nbd.Errno, cookie uint64, ok bool)
	// raw, if it returns bytes for connection n, is what the server
	// writes after that connection's first request, before closing it.
	raw func(n int) []byte
}

type fakeHandler struct{}

func (fakeHandler) Exports() []nbd.ExportInfo { return nil }
func (fakeHandler) Export(string) (nbd.ExportInfo, error) {
	return nbd.ExportInfo{Size: 1 << 20, Flags: nbd.FlagSendFlush | nbd.FlagSendFUA}, nil
}

func (f *fakeNBD) start(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for n := 0; ; n++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			f.mu.Lock()
			f.cookies = append(f.cookies, nil)
			f.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				f.serve(n, c)
			}()
		}
	}()
	return "nbd://" + l.Addr().String() + "/disk"
}

func (f *fakeNBD) serve(n int, c net.Conn) {
	if _, err := nbd.Negotiate(c, fakeHandler{}); err != nil {
		return
	}
	var h [nbd.RequestLen]byte
	for {
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		r, err := nbd.ParseRequest(h[:])
		if err != nil || r.Type == nbd.CmdDisc {
			return
		}
		if r.Type == nbd.CmdWrite {
			if _, err := io.CopyN(io.Discard, c, int64(r.Length)); err != nil {
				return
			}
		}
		f.mu.Lock()
		f.cookies[n] = append(f.cookies[n], r.Cookie)
		f.mu.Unlock()
		if f.raw != nil {
			if b := f.raw(n); b != nil {
				c.Write(b) //nolint:errcheck // the client may have closed
				return
			}
		}
		errno, cookie, ok := f.answer(n, r)
		if !ok {
			continue
		}
		b := nbd.AppendSimpleReply(nil, errno, cookie)
		if r.Type == nbd.CmdRead && errno == 0 {
			b = append(b, make([]byte, r.Length)...)
		}
		if _, err := c.Write(b); err != nil {
			return
		}
	}
}

// seen returns how often cookie arrived on connection n.
func (f *fakeNBD) seen(n int, cookie uint64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := 0
	if n < len(f.cookies) {
		for _, c := range f.cookies[n] {
			if c == cookie {
				k++
			}
		}
	}
	return k
}

func (f *fakeNBD) conns() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.cookies)
}

// TestNBDTimeoutReconnects: a request without an answer is never sent
// twice on one connection (the server keeps no record of what it ran):
// the timeout closes the connection and the request goes out again on a
// new one.
func TestNBDTimeoutReconnects(t *testing.T) {
	var first uint64
	f := &fakeNBD{answer: func(n int, r nbd.Request) (nbd.Errno, uint64, bool) {
		if n == 0 && r.Type == nbd.CmdWrite {
			first = r.Cookie
			return 0, 0, false // swallowed
		}
		return 0, r.Cookie, true
	}}
	c, err := Dial(context.Background(), fastOpts(f.start(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	d := newBlockDev(c)
	if err := d.write(4096, make([]byte, 4096)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if got := f.seen(0, first); got != 1 {
		t.Fatalf("the unanswered write went out %d times on its connection, want 1", got)
	}
	if f.conns() < 2 || f.seen(1, first) != 1 {
		t.Fatalf("want the write resent once on a second connection: %d connections, %d copies", f.conns(), f.seen(1, first))
	}
	if st := c.Stats(); st.Reconnects < 1 || st.Failed != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestNBDBadReplies: a reply the client cannot place (an unknown cookie:
// with simple replies the length of its data is unknown) or ESHUTDOWN
// closes the connection; the request is resent on the next one and
// succeeds.
func TestNBDBadReplies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		errno nbd.Errno
		bump  uint64
	}{
		{"unknown cookie", 0, 1 << 40},
		{"ESHUTDOWN", nbd.ESHUTDOWN, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeNBD{answer: func(n int, r nbd.Request) (nbd.Errno, uint64, bool) {
				if n == 0 && r.Type == nbd.CmdRead && r.Cookie&PingBit == 0 {
					return tc.errno, r.Cookie + tc.bump, true
				}
				return 0, r.Cookie, true
			}}
			c, err := Dial(context.Background(), fastOpts(f.start(t)))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			d := newBlockDev(c)
			got, err := d.read(0, 8192)
			if err != nil || !bytes.Equal(got, make([]byte, 8192)) {
				t.Fatalf("read: %v", err)
			}
			if st := c.Stats(); st.Reconnects != 1 || st.Failed != 0 {
				t.Fatalf("want one reconnect: %+v", st)
			}
		})
	}
}

// TestNBDRetriesExhausted: with the server silent, a request fails with
// EIO after its attempts, and the connection is not trusted with a late
// reply.
func TestNBDRetriesExhausted(t *testing.T) {
	f := &fakeNBD{answer: func(n int, r nbd.Request) (nbd.Errno, uint64, bool) {
		return 0, r.Cookie, r.Cookie&PingBit != 0 // only pings are answered
	}}
	o := fastOpts(f.start(t))
	o.Retries = 2
	c, err := Dial(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	d := newBlockDev(c)
	start := time.Now()
	if err := d.write(0, make([]byte, 4096)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write to a silent server: %v, want EIO", err)
	}
	t.Logf("EIO after %v, %d connections", time.Since(start), f.conns())
	if f.conns() < 3 {
		t.Fatalf("want one connection per attempt, got %d", f.conns())
	}
}

func TestNBDURLRefusals(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"nbd://", "no server host"},
		{"nbd://h:0/x", "port"},
		{"nbd://h/x?socket=/s", "no query"},
		{"nbd+unix://h/x?socket=/s", "no host"},
		{"nbd+unix:///x", "socket=/PATH"},
		{"nbd+unix:///x?socket=rel", "absolute"},
		{"nbds://h/x", "TLS"},
	} {
		_, err := Dial(context.Background(), Options{URL: tc.url})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.url, err, tc.want)
		}
	}
	o := Options{URL: "nbd://127.0.0.1:1/x"}
	o.Crypto.Suite = 1
	if _, err := Dial(context.Background(), o); err == nil || !strings.Contains(err.Error(), "NBD servers do not speak") {
		t.Errorf("crypto over NBD: %v", err)
	}
}

// FuzzNBDClientReplies: whatever a server sends back, the client neither
// panics nor hangs: the request completes (after a reconnect to a sane
// server, or with EIO once its attempts are used up).
func FuzzNBDClientReplies(f *testing.F) {
	f.Add(nbd.AppendSimpleReply(nil, 0, 1))
	f.Add(append(nbd.AppendSimpleReply(nil, 0, 1), make([]byte, 4096)...))
	f.Add(nbd.AppendSimpleReply(nil, nbd.EIO, 1))
	f.Add(nbd.AppendChunkHeader(nil, nbd.ChunkFlagDone, nbd.ChunkOffsetData, 1, 4104))
	f.Add(nbd.AppendSimpleReply(nil, 0, PingBit|1))
	f.Fuzz(func(t *testing.T, b []byte) {
		srv := &fakeNBD{
			answer: func(n int, r nbd.Request) (nbd.Errno, uint64, bool) { return 0, r.Cookie, true },
			raw: func(n int) []byte {
				if n == 0 {
					return b
				}
				return nil
			},
		}
		o := fastOpts(srv.start(t))
		o.Retries = 3
		c, err := Dial(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		d := newBlockDev(c)
		done := make(chan error, 1)
		go func() {
			_, err := d.read(0, 4096)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, syscall.EIO) {
				t.Fatalf("read: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the read did not complete")
		}
	})
}
