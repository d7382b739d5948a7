package export_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dst-dev/dst/export"
	"github.com/dst-dev/dst/export/exporttest"
	"github.com/dst-dev/dst/internal/wire"
)

// helloBytes encodes h, then lets mod change the bytes.
func helloBytes(t *testing.T, h *wire.Hello, mod func([]byte) []byte) []byte {
	var buf bytes.Buffer
	if err := wire.WriteHello(&buf, h); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if mod != nil {
		b = mod(b)
	}
	return b
}

// withAttr appends a raw attribute to a HELLO and fixes its body length.
func withAttr(typ uint16, val []byte) func([]byte) []byte {
	return func(b []byte) []byte {
		b = binary.LittleEndian.AppendUint16(b, typ)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(val)))
		b = append(b, val...)
		binary.LittleEndian.PutUint32(b[8:12], uint32(len(b)-wire.HandshakeHeaderSize))
		return b
	}
}

// TestHandshakeRefusals: every refusal code, with its reason.
func TestHandshakeRefusals(t *testing.T) {
	path := exporttest.File(t, testSize)
	good := &wire.Hello{Export: "disk", Features: exporttest.AllFeatures}
	for _, tc := range []struct {
		name   string
		hello  func(t *testing.T) []byte
		code   wire.RefuseCode
		reason string // the REASON must contain it
		before func(srv *export.Server)
	}{
		{
			name: "version 0",
			hello: func(t *testing.T) []byte {
				return helloBytes(t, good, func(b []byte) []byte { b[4], b[5] = 0, 0; return b })
			},
			code: wire.RefuseVersion, reason: "speaks version 1",
		},
		{
			name:  "unknown export",
			hello: func(t *testing.T) []byte { return helloBytes(t, &wire.Hello{Export: "nope", Features: 1}, nil) },
			code:  wire.RefuseNoSuchExport, reason: `no export named "nope"`,
		},
		{
			name: "access list changed",
			hello: func(t *testing.T) []byte {
				return helloBytes(t, good, nil)
			},
			before: func(srv *export.Server) {
				if err := srv.SetAccess(export.ACL{Rules: []export.Rule{mustRule("10.0.0.0/8=rw")}}); err != nil {
					panic(err)
				}
			},
			code: wire.RefuseAccessDenied, reason: "is not on the access list",
		},
		{
			name:  "unknown critical attribute",
			hello: func(t *testing.T) []byte { return helloBytes(t, good, withAttr(0x8077, []byte{1})) },
			code:  wire.RefuseUnsupported, reason: "unknown critical attribute 0x8077",
		},
		{
			name: "bad magic",
			hello: func(t *testing.T) []byte {
				return helloBytes(t, good, func(b []byte) []byte { b[0] = 'X'; return b })
			},
			code: wire.RefuseMalformed, reason: "magic",
		},
		{
			name: "duplicate attribute",
			hello: func(t *testing.T) []byte {
				return helloBytes(t, good, withAttr(wire.AttrHelloFeatures, make([]byte, 8)))
			},
			code: wire.RefuseMalformed, reason: "appears twice",
		},
		{
			name: "truncated attribute",
			hello: func(t *testing.T) []byte {
				return helloBytes(t, good, func(b []byte) []byte {
					b = append(b, 5, 0, 9) // 3 bytes: a truncated attribute header
					binary.LittleEndian.PutUint32(b[8:12], uint32(len(b)-wire.HandshakeHeaderSize))
					return b
				})
			},
			code: wire.RefuseMalformed, reason: "truncated",
		},
		{
			name: "bad export name",
			hello: func(t *testing.T) []byte {
				return helloBytes(t, good, func(b []byte) []byte {
					i := bytes.Index(b, []byte("disk"))
					copy(b[i:], "d/sk")
					return b
				})
			},
			code: wire.RefuseMalformed, reason: "export name",
		},
		{
			name: "not a hello",
			hello: func(t *testing.T) []byte {
				return helloBytes(t, good, func(b []byte) []byte { b[6] = byte(wire.MsgWelcome); return b })
			},
			code: wire.RefuseMalformed, reason: "want HELLO",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, addr := exporttest.Start(t, config(path), exporttest.TCP4)
			c := exporttest.Dial(t, addr)
			if tc.before != nil {
				waitFor(t, 5*time.Second, "the connection to be accepted", func() bool { return srv.NumConns() == 1 })
				tc.before(srv)
			}
			if err := c.SendRaw(tc.hello(t)); err != nil {
				t.Fatal(err)
			}
			checkRefused(t, c, tc.code, tc.reason)
		})
	}

	t.Run("shutting down", func(t *testing.T) {
		srv, addr := exporttest.Start(t, config(path), exporttest.TCP4)
		c := exporttest.Dial(t, addr)
		waitFor(t, 5*time.Second, "the connection to be accepted", func() bool { return srv.NumConns() == 1 })
		done := make(chan error, 1)
		go func() { done <- srv.Shutdown(context.Background()) }()
		time.Sleep(50 * time.Millisecond) // Shutdown has begun and waits for the handshake
		if err := c.SendRaw(helloBytes(t, good, nil)); err != nil {
			t.Fatal(err)
		}
		checkRefused(t, c, wire.RefuseBusy, "shutting down")
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

func checkRefused(t *testing.T, c *exporttest.Client, code wire.RefuseCode, reason string) {
	t.Helper()
	c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := wire.ReadWelcome(c.R)
	var re *wire.RefuseError
	if !errors.As(err, &re) {
		t.Fatalf("got %v, want a REFUSE %v", err, code)
	}
	if re.Code != code || !strings.Contains(re.Reason, reason) {
		t.Fatalf("REFUSE %v %q, want %v containing %q", re.Code, re.Reason, code, reason)
	}
	if re.Code == wire.RefuseNoSuchExport && strings.Contains(re.Reason, "disk") {
		t.Fatalf("NO_SUCH_EXPORT reason %q leaks an export name", re.Reason)
	}
	c.ExpectClosed(5 * time.Second)
}

// TestACLDenyAtAccept: a peer that no rule admits is closed at accept,
// before any handshake (no REFUSE), with a log line; an admitted one is
// served.
func TestACLDenyAtAccept(t *testing.T) {
	path := exporttest.File(t, testSize)
	cfg := config(path)
	cfg.Access = export.ACL{Rules: []export.Rule{mustRule("127.0.0.1/32=rw")}}
	log, logs := exporttest.ObservedLogger(t)
	cfg.Log = log
	_, addr := exporttest.Start(t, cfg, exporttest.TCP4)
	target := strings.TrimPrefix(addr, "dst://")

	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", target)
	if err != nil {
		t.Skipf("cannot dial from 127.0.0.2: %v", err)
	}
	c := exporttest.NewClient(t, nc)
	_ = c.SendRaw(helloBytes(t, &wire.Hello{Export: "disk", Features: 1}, nil))
	c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := c.R.ReadByte(); err == nil {
		t.Fatalf("denied peer got data (%#x): want the connection closed without a handshake", b)
	}
	e := exporttest.WaitLog(t, logs, "peer is not on the access list", 5*time.Second)
	if p, _ := e.ContextMap()["peer"].(string); !strings.HasPrefix(p, "127.0.0.2:") {
		t.Fatalf("log line names peer %q", p)
	}
	exporttest.Connect(t, addr, "disk") // 127.0.0.1 is admitted
}

// TestWelcome: permissions, features and the WELCOME values.
func TestWelcome(t *testing.T) {
	path := exporttest.File(t, testSize)
	roPath := exporttest.File(t, testSize)
	base := func() export.Config {
		cfg := config(path)
		cfg.Exports = append(cfg.Exports, export.ExportConfig{Name: "ro", Path: roPath, ReadOnly: true})
		cfg.MaxTransfer = 1000000 // rounded down to a multiple of the logical block
		cfg.MaxInflight = 100
		return cfg
	}
	const writeFeatures = wire.FeatFlush | wire.FeatFUA | wire.FeatDiscard | wire.FeatWriteZeroes
	for _, tc := range []struct {
		name     string
		acl      string
		hello    wire.Hello
		readOnly bool
		features wire.Features
		inflight uint32
	}{
		{name: "read-write", hello: wire.Hello{Export: "disk", Features: exporttest.AllFeatures},
			features: exporttest.AllFeatures, inflight: 100},
		{name: "ro by export", hello: wire.Hello{Export: "ro", Features: exporttest.AllFeatures},
			readOnly: true, features: wire.FeatResume, inflight: 100},
		{name: "ro by rule", acl: "127.0.0.0/8=ro", hello: wire.Hello{Export: "disk", Features: exporttest.AllFeatures},
			readOnly: true, features: exporttest.AllFeatures, inflight: 100},
		{name: "ro by client", hello: wire.Hello{Export: "disk", Features: exporttest.AllFeatures, WantReadOnly: true},
			readOnly: true, features: exporttest.AllFeatures, inflight: 100},
		{name: "features intersection", hello: wire.Hello{Export: "disk", Features: wire.FeatFlush | wire.FeatDiscard | 1<<40},
			features: wire.FeatFlush | wire.FeatDiscard, inflight: 100},
		{name: "no features", hello: wire.Hello{Export: "disk"}, features: 0, inflight: 100},
		{name: "client max inflight", hello: wire.Hello{Export: "disk", Features: writeFeatures, MaxInflight: 7},
			features: writeFeatures, inflight: 7},
		{name: "client asks more", hello: wire.Hello{Export: "disk", Features: writeFeatures, MaxInflight: 5000},
			features: writeFeatures, inflight: 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			if tc.acl != "" {
				cfg.Access = export.ACL{Rules: []export.Rule{mustRule(tc.acl)}}
			}
			_, addr := exporttest.Start(t, cfg, exporttest.TCP4)
			c := exporttest.Dial(t, addr)
			w, err := c.Hello(&tc.hello)
			if err != nil {
				t.Fatal(err)
			}
			if w.ReadOnly != tc.readOnly || w.Features != tc.features || w.MaxInflight != tc.inflight {
				t.Fatalf("read-only %v features %v max-inflight %d, want %v %v %d",
					w.ReadOnly, w.Features, w.MaxInflight, tc.readOnly, tc.features, tc.inflight)
			}
			lb := w.LogicalBlock
			if w.Version != 1 || w.Resumed || w.Session.IsZero() || w.Size != testSize ||
				lb < 512 || w.PhysicalBlock < lb || w.MaxTransfer != 1000000/lb*lb ||
				w.ExporterName != "test-exporter" || w.TagSize != 0 {
				t.Fatalf("welcome %+v", w)
			}
			if tc.features&wire.FeatDiscard != 0 && (w.DiscardGranularity < lb || w.DiscardGranularity%lb != 0) {
				t.Fatalf("discard granularity %d with logical block %d", w.DiscardGranularity, lb)
			}
			// The connection works.
			c.MustDo(read(1, 0, int(lb)), nil, wire.StatusOK)
		})
	}
}

// TestMemPeer: in-process peers are local: admitted read-write without a
// rule, read-only with "unix=ro".
func TestMemPeer(t *testing.T) {
	path := exporttest.File(t, testSize)
	for _, tc := range []struct {
		rules    []string
		readOnly bool
	}{
		{[]string{"10.0.0.0/8=rw"}, false},
		{[]string{"10.0.0.0/8=rw", "unix=ro"}, true},
	} {
		cfg := config(path)
		cfg.Access = export.ACL{}
		for _, r := range tc.rules {
			cfg.Access.Rules = append(cfg.Access.Rules, mustRule(r))
		}
		_, addr := exporttest.Start(t, cfg, exporttest.MemURL(t))
		c := exporttest.Connect(t, addr, "disk")
		if c.Welcome.ReadOnly != tc.readOnly {
			t.Fatalf("rules %v: read-only %v", tc.rules, c.Welcome.ReadOnly)
		}
	}
}
