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
	"syscall"
	"testing"
	"time"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
	"github.com/dst-dev/dst/transport/fault"
)

// blockDev is a synchronous block-device view of a Client, for tests: each
// call is one transaction with its own handle and buffer.
type blockDev struct {
	c    *Client
	mu   sync.Mutex
	wait map[Handle]chan syscall.Errno
	next Handle
}

func newBlockDev(c *Client) *blockDev {
	d := &blockDev{c: c, wait: map[Handle]chan syscall.Errno{}}
	c.SetDeliver(func(comps []Completion) {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, cp := range comps {
			ch := d.wait[cp.Handle]
			delete(d.wait, cp.Handle)
			ch <- cp.Err
		}
	})
	return d
}

func (d *blockDev) do(op wire.Op, flags wire.Flags, off uint64, length uint32, buf []byte) error {
	ch := make(chan syscall.Errno, 1)
	d.mu.Lock()
	h := d.next
	d.next++
	d.wait[h] = ch
	d.mu.Unlock()
	d.c.Submit(h, op, flags, off, length, buf)
	if e := <-ch; e != 0 {
		return e
	}
	return nil
}

func (d *blockDev) write(off uint64, data []byte) error {
	return d.do(wire.OpWrite, 0, off, uint32(len(data)), data)
}

func (d *blockDev) read(off uint64, n int) ([]byte, error) {
	b := make([]byte, n)
	err := d.do(wire.OpRead, 0, off, uint32(n), b)
	return b, err
}

func exportCfg(path string) export.Config {
	return export.Config{
		Exports: []export.ExportConfig{{Name: "disk", Path: path}},
		Access:  export.ACL{AllowAll: export.ReadWrite},
	}
}

func fastOpts(url string) Options {
	return Options{URL: url, Tick: 10 * time.Millisecond, Timeout: 300 * time.Millisecond, Retries: 20,
		Ping: 100 * time.Millisecond, BackoffMax: 100 * time.Millisecond, Capacity: 64}
}

func TestClientOverEveryTransport(t *testing.T) {
	for _, tr := range exporttest.Transports(t) {
		if tr.Name == "mem" {
			continue // the client needs a socket for io_uring (TestClientRefusesMem)
		}
		t.Run(tr.Name, func(t *testing.T) {
			path := exporttest.File(t, 4<<20)
			_, addr := exporttest.Start(t, exportCfg(path), tr.URL)
			url := addr + "/disk"
			if strings.HasPrefix(addr, "dst+unix") {
				url = addr + "?export=disk"
			}
			c, err := Dial(context.Background(), fastOpts(url))
			if err != nil {
				t.Fatal(err)
			}
			w := c.Welcome()
			if w.Size != 4<<20 || w.ReadOnly || w.Features&wire.FeatFlush == 0 {
				t.Fatalf("welcome %+v", w)
			}
			d := newBlockDev(c)
			data := bytes.Repeat([]byte("dst."), 16<<10)
			if err := d.write(1<<20, data); err != nil {
				t.Fatal(err)
			}
			if err := d.do(wire.OpFlush, 0, 0, 0, nil); err != nil {
				t.Fatal(err)
			}
			got, err := d.read(1<<20, len(data))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back: %v equal %v", err, bytes.Equal(got, data))
			}
			// An out-of-range request fails alone; the connection stays.
			if err := d.write(4<<20, data[:512]); !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EINVAL) {
				t.Fatalf("write past the end: %v", err)
			}
			if err := d.do(wire.OpWriteZeroes, 0, 1<<20, 4096, nil); err != nil {
				t.Fatal(err)
			}
			got, _ = d.read(1<<20, 4096)
			if !bytes.Equal(got, make([]byte, 4096)) {
				t.Fatal("write-zeroes did not zero")
			}
			if err := c.Close(ctx5s(t)); err != nil {
				t.Fatalf("clean detach: %v", err)
			}
			disk, _ := os.ReadFile(path)
			if !bytes.Equal(disk[1<<20+4096:1<<20+len(data)], data[4096:]) {
				t.Fatal("exported file does not hold the data")
			}
		})
	}
}

func ctx5s(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestClientRefusals(t *testing.T) {
	path := exporttest.File(t, 1<<20)
	cfg := exportCfg(path)
	cfg.Access = export.ACL{Rules: []export.Rule{mustRule(t, "10.9.9.9/32=rw")}}
	_, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	_, err := Dial(context.Background(), fastOpts(addr+"/disk"))
	if err == nil {
		t.Fatal("connected from a peer outside the access list")
	}
	cfg2 := exportCfg(path + "2")
	os.WriteFile(path+"2", make([]byte, 1<<20), 0o600)
	_, addr2 := exporttest.Start(t, cfg2, exporttest.TCP4)
	_, err = Dial(context.Background(), fastOpts(addr2+"/nope"))
	var re *wire.RefuseError
	if !errors.As(err, &re) || re.Code != wire.RefuseNoSuchExport {
		t.Fatalf("unknown export: %v", err)
	}
	if _, err := Dial(context.Background(), fastOpts("dst://127.0.0.1:1/disk")); err == nil {
		t.Fatal("dialled a closed port")
	}
}

func TestClientRefusesMem(t *testing.T) {
	_, err := Dial(context.Background(), fastOpts("dst+mem://x/disk"))
	if err == nil || !strings.Contains(err.Error(), "tcp or unix") {
		t.Fatalf("mem URL: %v", err)
	}
}

func mustRule(t *testing.T, s string) export.Rule {
	r, err := export.ParseRule(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestClientSurvivesCuts runs concurrent writers and readers through a
// proxy that cuts the connection again and again, mid-frame. Every request
// must succeed, reads must see the last acknowledged write of their block,
// and the disk must end equal to the model: nothing lost, nothing applied
// twice out of order.
func TestClientSurvivesCuts(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			const blocks, bs = 64, 4096
			path := exporttest.File(t, blocks*bs)
			_, addr := exporttest.Start(t, exportCfg(path), exporttest.TCP4)
			p := &fault.Proxy{Listen: "dst://127.0.0.1:0", Target: addr, Rand: rand.New(rand.NewPCG(seed, 7)),
				Fault: fault.Config{Write: fault.Rules{Cut: true, CutAfter: 200_000}, Read: fault.Rules{Cut: true, CutAfter: 150_000}}}
			if err := p.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			c, err := Dial(context.Background(), fastOpts(p.URL().String()+"/disk"))
			if err != nil {
				t.Fatal(err)
			}
			d := newBlockDev(c)
			// Each block has one writer goroutine (block-layer semantics:
			// overlapping writes are not issued concurrently) that writes a
			// new version and reads it back.
			model := make([][]byte, blocks)
			var wg sync.WaitGroup
			errs := make(chan error, blocks)
			for b := range blocks {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(seed, uint64(b)))
					for v := range 12 {
						data := make([]byte, bs)
						for i := range data {
							data[i] = byte(rng.Uint32())
						}
						copy(data, fmt.Sprintf("block %d version %d", b, v))
						if err := d.write(uint64(b*bs), data); err != nil {
							errs <- fmt.Errorf("block %d v%d write: %w", b, v, err)
							return
						}
						got, err := d.read(uint64(b*bs), bs)
						if err != nil || !bytes.Equal(got, data) {
							errs <- fmt.Errorf("block %d v%d read back: %v (%q)", b, v, err, got[:20])
							return
						}
						model[b] = data
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			st := c.Stats()
			if err := c.Close(ctx5s(t)); err != nil {
				t.Logf("detach: %v", err)
			}
			disk, _ := os.ReadFile(path)
			for b := range blocks {
				if !bytes.Equal(disk[b*bs:(b+1)*bs], model[b]) {
					t.Fatalf("block %d on disk is not the last acknowledged write", b)
				}
			}
			if st.Reconnects == 0 {
				t.Fatal("the proxy never cut the connection: the test proved nothing")
			}
			t.Logf("reconnects %d, resent %d, timeouts %d", st.Reconnects, st.Resent, st.Timeouts)
		})
	}
}

// TestClientExporterRestart stops the exporter while requests are in
// flight and starts a new one on the same address: the client reconnects
// into a new session and every request completes without error.
func TestClientExporterRestart(t *testing.T) {
	path := exporttest.File(t, 1<<20)
	l, u, err := transport.Listen(context.Background(), exporttest.TCP4, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr := u.String()
	srv, err := export.New(exportCfg(path))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	c, err := Dial(context.Background(), fastOpts(addr+"/disk"))
	if err != nil {
		t.Fatal(err)
	}
	d := newBlockDev(c)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 40 {
				data := bytes.Repeat([]byte{byte(i*40 + j)}, 4096)
				if err := d.write(uint64(i*4096), data); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	srv.Shutdown(ctx)
	cancel()
	time.Sleep(200 * time.Millisecond) // an outage shorter than the retries
	l2, err := net.Listen("tcp", strings.TrimPrefix(addr, "dst://"))
	if err != nil {
		t.Fatal(err)
	}
	srv2, err := export.New(exportCfg(path))
	if err != nil {
		t.Fatal(err)
	}
	go srv2.Serve(context.Background(), l2)
	defer srv2.Shutdown(context.Background())
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("write failed across an exporter restart: %v", err)
	}
	for i := range 8 {
		got, err := d.read(uint64(i*4096), 4096)
		if err != nil || got[0] != byte(i*40+39) {
			t.Fatalf("block %d: %v, version %d", i, err, got[0])
		}
	}
	if c.Stats().Reconnects == 0 {
		t.Fatal("no reconnect seen")
	}
	c.Close(ctx5s(t))
}

// TestClientRetriesExhausted: with the exporter gone for good, a request
// fails with EIO after about Timeout × (Retries+1), and Close still
// returns.
func TestClientRetriesExhausted(t *testing.T) {
	path := exporttest.File(t, 1<<20)
	l, u, _ := transport.Listen(context.Background(), exporttest.TCP4, transport.Options{})
	srv, _ := export.New(exportCfg(path))
	go srv.Serve(context.Background(), l)
	o := fastOpts(u.String() + "/disk")
	o.Timeout, o.Retries = 100*time.Millisecond, 2
	c, err := Dial(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	d := newBlockDev(c)
	srv.Shutdown(context.Background())
	start := time.Now()
	err = d.write(0, make([]byte, 4096))
	el := time.Since(start)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("write with the exporter gone: %v, want EIO", err)
	}
	bound := time.Duration(o.Retries+1)*o.Timeout + o.Ping + 100*time.Millisecond
	if el > bound {
		t.Fatalf("failed after %v, bound %v", el, bound)
	}
	t.Logf("EIO after %v (timeout %v × %d attempts)", el, o.Timeout, o.Retries+1)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c.Close(ctx) // must return even though the exporter is gone
}
