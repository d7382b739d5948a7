package nbd

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want URL
	}{
		{"nbd://server/disk0", URL{"tcp", "server:10809", "disk0"}},
		{"nbd://server:10900/disk0", URL{"tcp", "server:10900", "disk0"}},
		{"nbd://[fd00::1]/d", URL{"tcp", "[fd00::1]:10809", "d"}},
		{"nbd://server", URL{"tcp", "server:10809", ""}},
		{"nbd://server/", URL{"tcp", "server:10809", ""}},
		{"nbd://server/a%20b/c", URL{"tcp", "server:10809", "a b/c"}},
		{"nbd+unix:///disk?socket=/run/nbd.sock", URL{"unix", "/run/nbd.sock", "disk"}},
		{"nbd+unix:///?socket=/s", URL{"unix", "/s", ""}},
	} {
		got, err := ParseURL(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		// The canonical form reads back the same.
		if again, err := ParseURL(got.String()); err != nil || again != got {
			t.Errorf("%q: String %q reads back as %+v, %v", tc.in, got.String(), again, err)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"nbd://", "no server host"},
		{"nbd://h:99999/x", "port"},
		{"nbd://u@h/x", "no user"},
		{"nbd://h/x#f", "fragment"},
		{"nbd://h/x?socket=/s", "no query"},
		{"nbd+unix://h/x?socket=/s", "no host"},
		{"nbd+unix:///x", "socket=/PATH"},
		{"nbd+unix:///x?socket=/s&b=1", "socket=/PATH"},
		{"nbd+unix:///x?socket=rel", "absolute"},
		{"nbds://h/x", "TLS"},
		{"nbds+unix:///x?socket=/s", "TLS"},
		{"dst://h/x", "scheme"},
		{"nbd://h/" + strings.Repeat("x", MaxStringLen+1), "export name"},
	} {
		_, err := ParseURL(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "accepted") {
			t.Errorf("ParseURL(%q): %v; want an error saying %q and the accepted forms", tc.in, err, tc.want)
		}
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"nbd://h/x", "nbd+unix:///x?socket=/s", "nbd://[::1]:1/%41", "nbds://h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURL(s)
		if err != nil {
			return
		}
		if again, err := ParseURL(u.String()); err != nil || again != u {
			t.Fatalf("%q: canonical %q reads back as %+v, %v", s, u.String(), again, err)
		}
	})
}

// serverScript replays bytes as the server's side of a negotiation and
// swallows what the client writes.
type serverScript struct{ r io.Reader }

func (s serverScript) Read(b []byte) (int, error)  { return s.r.Read(b) }
func (s serverScript) Write(b []byte) (int, error) { return len(b), nil }

// TestClientGoBoundsReplies: a server announcing a huge option reply is
// refused before the client allocates it.
func TestClientGoBoundsReplies(t *testing.T) {
	var srv bytes.Buffer
	srv.Write(AppendGreeting(nil, FlagFixedNewstyle|FlagNoZeroes))
	b := be.AppendUint64(nil, RepMagic)
	b = be.AppendUint32(b, uint32(OptGo))
	b = be.AppendUint32(b, uint32(RepInfo))
	b = be.AppendUint32(b, 0xffffffff)
	srv.Write(b)
	_, _, err := ClientGo(serverScript{&srv}, ClientOptions{Export: "x", BlockSize: true})
	var pe *ProtocolError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("huge option reply: %v", err)
	}
}

// FuzzClientGo feeds arbitrary server bytes to the client's negotiation:
// it must end with an error or an export, never panic or allocate what the
// server claims without bound.
func FuzzClientGo(f *testing.F) {
	var ok bytes.Buffer
	ok.Write(AppendGreeting(nil, FlagFixedNewstyle|FlagNoZeroes))
	ok.Write(AppendInfoExport(nil, OptGo, 1<<20, FlagHasFlags|FlagSendFlush))
	ok.Write(AppendInfoBlockSize(nil, OptGo, 512, 4096, 1<<20))
	ok.Write(AppendOptionReply(nil, OptGo, RepAck, nil))
	f.Add(ok.Bytes())
	f.Add(AppendGreeting(nil, FlagFixedNewstyle))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, _, err := ClientGo(serverScript{bytes.NewReader(b)}, ClientOptions{Export: "x", BlockSize: true, Structured: true})
		if err == nil && info.Name == "" {
			t.Fatalf("success without an export name: %+v", info)
		}
	})
}
