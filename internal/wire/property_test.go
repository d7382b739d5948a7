package wire

import (
	"bytes"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"testing/quick"
	"time"
)

// Random valid values: encode → decode gives the same value.

var requestOps = []Op{OpRead, OpWrite, OpFlush, OpDiscard, OpWriteZeroes, OpPing, OpDisconnect}

func randRequest(r *rand.Rand, maxTransfer uint32) Request {
	q := Request{Op: requestOps[r.IntN(len(requestOps))], ID: r.Uint64(), Floor: r.Uint64()}
	switch q.Op {
	case OpRead, OpWrite:
		q.Offset = r.Uint64()
		q.Length = 1 + r.Uint32N(maxTransfer)
		if q.Op == OpWrite && r.IntN(2) == 0 {
			q.Flags = FlagFUA
		}
	case OpDiscard, OpWriteZeroes:
		q.Offset = r.Uint64()
		q.Length = 1 + r.Uint32N(math.MaxUint32)
		if q.Op == OpWriteZeroes && r.IntN(2) == 0 {
			q.Flags = FlagNoUnmap
		}
	}
	return q
}

func randReply(r *rand.Rand) Reply {
	op := append(requestOps, OpGoodbye)[r.IntN(len(requestOps)+1)]
	p := Reply{Op: op, ID: r.Uint64()}
	switch {
	case op == OpGoodbye:
		p.ID = 0
	case op == OpPing:
	case r.IntN(3) == 0:
		p.Status = Status(1 + r.IntN(MaxErrno))
	case op == OpRead:
		p.Length = r.Uint32N(MaxTransferLimit + 1)
	}
	return p
}

const nameChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"

func randExportName(r *rand.Rand) string {
	for {
		b := make([]byte, 1+r.IntN(MaxNameLen))
		for i := range b {
			b[i] = nameChars[r.IntN(len(nameChars))]
		}
		if s := string(b); s != "." && s != ".." {
			return s
		}
	}
}

// randString returns valid UTF-8 of at most MaxNameLen bytes.
func randString(r *rand.Rand) string {
	runes := []rune{'a', 'Z', '0', ' ', '.', 'é', '—', '世', '🙂', '\n'}
	var b []byte
	for n := r.IntN(80); n > 0; n-- {
		c := string(runes[r.IntN(len(runes))])
		if len(b)+len(c) > MaxNameLen {
			break
		}
		b = append(b, c...)
	}
	return string(b)
}

func randToken(r *rand.Rand) Token {
	var t Token
	for i := range t {
		t[i] = byte(r.Uint32())
	}
	return t
}

func randHello(r *rand.Rand) Hello {
	h := Hello{
		Version:      uint16(1 + r.IntN(math.MaxUint16)),
		Export:       randExportName(r),
		Features:     Features(r.Uint64()),
		WantReadOnly: r.IntN(2) == 0,
		ClientName:   randString(r),
		TagSize:      uint8(r.Uint32()),
	}
	if r.IntN(2) == 0 {
		h.HasSession, h.Session = true, randToken(r)
	}
	if r.IntN(2) == 0 {
		h.MaxInflight = 1 + r.Uint32N(MaxInflightLimit)
	}
	return h
}

func randWelcome(r *rand.Rand) Welcome {
	lb := uint32(512) << r.IntN(8) // 512..65536
	w := Welcome{
		Version:       1,
		Session:       randToken(r),
		Resumed:       r.IntN(2) == 0,
		Size:          uint64(lb) * r.Uint64N(math.MaxInt64/uint64(lb)+1),
		LogicalBlock:  lb,
		PhysicalBlock: lb << r.IntN(10),
		MaxTransfer:   lb * (1 + r.Uint32N(MaxTransferLimit/lb)),
		ReadOnly:      r.IntN(2) == 0,
		Features:      Features(r.Uint64()),
		MaxInflight:   1 + r.Uint32N(MaxInflightLimit),
		TagSize:       uint8(r.Uint32()),
		ExporterName:  randString(r),
	}
	if w.Features&FeatDiscard != 0 || r.IntN(2) == 0 {
		w.DiscardGranularity = lb * (1 + r.Uint32N(math.MaxUint32/lb))
	}
	return w
}

func TestPropertyRoundTrip(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0x5d57))
	var rb [RequestHeaderSize]byte
	var pb [ReplyHeaderSize]byte
	for i := 0; i < 20000; i++ {
		mt := []uint32{512, DefaultMaxTransfer, MaxTransferLimit}[i%3]
		q := randRequest(r, mt)
		q.Put(rb[:])
		got, err := ParseRequest(rb[:], mt)
		if err != nil || got != q {
			t.Fatalf("request %+v: got %+v, %v", q, got, err)
		}

		p := randReply(r)
		p.Put(pb[:])
		gotp, err := ParseReply(pb[:])
		if err != nil || gotp != p {
			t.Fatalf("reply %+v: got %+v, %v", p, gotp, err)
		}
	}
	var buf bytes.Buffer
	for i := 0; i < 3000; i++ {
		h := randHello(r)
		buf.Reset()
		if err := WriteHello(&buf, &h); err != nil {
			t.Fatalf("WriteHello(%+v): %v", h, err)
		}
		got, err := ReadHello(&buf)
		if err != nil || !reflect.DeepEqual(*got, h) {
			t.Fatalf("hello %+v: got %+v, %v", h, got, err)
		}

		w := randWelcome(r)
		buf.Reset()
		if err := WriteWelcome(&buf, &w); err != nil {
			t.Fatalf("WriteWelcome(%+v): %v", w, err)
		}
		gotw, err := ReadWelcome(&buf)
		if err != nil || !reflect.DeepEqual(*gotw, w) {
			t.Fatalf("welcome %+v: got %+v, %v", w, gotw, err)
		}
	}
}

// TestQuickRequest runs the request property through testing/quick with
// arbitrary field values: whatever ParseRequest accepts, Put reproduces,
// and Validate agrees with ParseRequest.
func TestQuickRequest(t *testing.T) {
	prop := func(op uint8, flags uint16, id, off uint64, length uint32, floor uint64, mt uint32) bool {
		b := reqBytes(Op(op), Flags(flags), id, off, length, floor)
		q, err := ParseRequest(b, mt)
		want := Request{Op: Op(op), Flags: Flags(flags), ID: id, Offset: off, Length: length, Floor: floor}
		if (err == nil) != (want.Validate(mt) == nil) {
			return false
		}
		if err != nil {
			return true
		}
		var out [RequestHeaderSize]byte
		q.Put(out[:])
		return q == want && bytes.Equal(out[:], b)
	}
	if err := quick.Check(prop, &quick.Config{MaxCount: 20000}); err != nil {
		t.Fatal(err)
	}
}
