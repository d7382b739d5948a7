package ublk

import (
	"encoding/binary"
	"encoding/hex"
	"reflect"
	"strings"
	"testing"
)

// Layouts are checked against offsets taken from the kernel header
// (include/uapi/linux/ublk_cmd.h, Linux 6.12).

func TestCtrlCmdLayout(t *testing.T) {
	var b [32]byte
	c := ctrlCmd{devID: 0x11223344, queueID: 0x5566, length: 0x7788, addr: 0x0102030405060708, data: 0xa1a2a3a4a5a6a7a8, devPathLen: 0xbbcc}
	c.put(b[:])
	want := "44332211" + "6655" + "8877" + "0807060504030201" + "a8a7a6a5a4a3a2a1" + "ccbb" + "0000" + "00000000"
	if got := hex.EncodeToString(b[:]); got != want {
		t.Fatalf("ctrl cmd\n got %s\nwant %s", got, want)
	}
}

func TestDevInfoRoundTrip(t *testing.T) {
	in := DevInfo{NrHWQueues: 2, QueueDepth: 128, State: StateLive, MaxIOBufBytes: 512 << 10, DevID: 7,
		ServerPID: 4242, Flags: FlagUserCopy | FlagCmdIoctlEncode, ServerFlags: 9, OwnerUID: 1, OwnerGID: 2}
	var b [sizeofDevInfo]byte
	in.marshal(&b)
	le := binary.LittleEndian
	checks := []struct {
		off  int
		got  uint64
		want uint64
	}{
		{0, uint64(le.Uint16(b[0:])), 2},
		{2, uint64(le.Uint16(b[2:])), 128},
		{4, uint64(le.Uint16(b[4:])), StateLive},
		{8, uint64(le.Uint32(b[8:])), 512 << 10},
		{12, uint64(le.Uint32(b[12:])), 7},
		{16, uint64(le.Uint32(b[16:])), 4242},
		{24, le.Uint64(b[24:]), FlagUserCopy | FlagCmdIoctlEncode},
		{32, le.Uint64(b[32:]), 9},
		{40, uint64(le.Uint32(b[40:])), 1},
		{44, uint64(le.Uint32(b[44:])), 2},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("offset %d: %d, want %d", c.off, c.got, c.want)
		}
	}
	var out DevInfo
	out.unmarshal(&b)
	if out != in {
		t.Fatalf("round trip: %+v != %+v", out, in)
	}
}

func TestParamsLayout(t *testing.T) {
	p := kparams{types: paramTypeBasic | paramTypeDiscard, attrs: attrVolatileCache | attrFUA,
		logicalBSShift: 9, physicalBSShift: 12, ioOptShift: 12, ioMinShift: 9, maxSectors: 1024,
		devSectors: 1 << 21, discardGranularity: 4096, maxDiscardSectors: 8, maxWriteZeroesSecs: 16, maxDiscardSegments: 1}
	var b [sizeofParams]byte
	p.marshal(&b)
	le := binary.LittleEndian
	if le.Uint32(b[0:]) != sizeofParams || le.Uint32(b[4:]) != 3 {
		t.Fatal("header: len or types wrong")
	}
	if le.Uint32(b[8:]) != attrVolatileCache|attrFUA || b[12] != 9 || b[13] != 12 || b[14] != 12 || b[15] != 9 {
		t.Fatal("basic: attrs or shifts at the wrong offsets")
	}
	if le.Uint32(b[16:]) != 1024 || le.Uint64(b[24:]) != 1<<21 {
		t.Fatal("basic: max_sectors at 16 / dev_sectors at 24 wrong")
	}
	if le.Uint32(b[44:]) != 4096 || le.Uint32(b[48:]) != 8 || le.Uint32(b[52:]) != 16 || le.Uint16(b[56:]) != 1 {
		t.Fatal("discard: granularity@44, max_discard@48, max_write_zeroes@52, segments@56 wrong")
	}
	// devt is read back from GET_PARAMS at offset 60.
	le.PutUint32(b[60:], 250)
	le.PutUint32(b[72:], 3)
	var q kparams
	q.unmarshal(&b)
	if q.charMajor != 250 || q.diskMinor != 3 || q.devSectors != 1<<21 || q.maxDiscardSegments != 1 {
		t.Fatalf("unmarshal: %+v", q)
	}
}

func TestIOCmdAndOffsets(t *testing.T) {
	var b [16]byte
	putIOCmd(&b, 3, 77, -5, 0xdeadbeef)
	if got := hex.EncodeToString(b[:]); got != "03004d00fbffffffefbeadde00000000" {
		t.Fatalf("io cmd %s", got)
	}
	if descStride(4096) != 98304 || descStride(65536) != 131072 {
		t.Fatalf("descriptor stride %d / %d", descStride(4096), descStride(65536))
	}
	if descLen(128, 4096) != 4096 || descLen(4096, 4096) != 98304 {
		t.Fatal("descriptor length")
	}
	if got := userCopyOff(1, 2); got != 0x80000000+1<<41+2<<25 {
		t.Fatalf("user copy offset %#x", got)
	}
}

func TestEncodedCommandNumbers(t *testing.T) {
	// _IOC(dir, 'u', nr, size): dir<<30 | size<<16 | 'u'<<8 | nr.
	ioc := func(dir, nr, size uint32) uint32 { return dir<<30 | size<<16 | 'u'<<8 | nr }
	const r, rw = 2, 3
	for _, c := range []struct {
		name      string
		got, want uint32
	}{
		{"GET_DEV_INFO", cmdGetDevInfo, ioc(r, 0x02, 32)},
		{"ADD_DEV", cmdAddDev, ioc(rw, 0x04, 32)},
		{"DEL_DEV", cmdDelDev, ioc(rw, 0x05, 32)},
		{"START_DEV", cmdStartDev, ioc(rw, 0x06, 32)},
		{"STOP_DEV", cmdStopDev, ioc(rw, 0x07, 32)},
		{"SET_PARAMS", cmdSetParams, ioc(rw, 0x08, 32)},
		{"GET_PARAMS", cmdGetParams, ioc(r, 0x09, 32)},
		{"START_USER_RECOVERY", cmdStartUserRecovery, ioc(rw, 0x10, 32)},
		{"END_USER_RECOVERY", cmdEndUserRecovery, ioc(rw, 0x11, 32)},
		{"GET_FEATURES", cmdGetFeatures, ioc(r, 0x13, 32)},
		{"FETCH_REQ", ioFetchReq, ioc(rw, 0x20, 16)},
		{"COMMIT_AND_FETCH_REQ", ioCommitAndFetchReq, ioc(rw, 0x21, 16)},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestFeatureNames(t *testing.T) {
	got := FeatureNames(0x1fe)
	want := []string{"URING_CMD_COMP_IN_TASK", "NEED_GET_DATA", "USER_RECOVERY", "USER_RECOVERY_REISSUE",
		"UNPRIVILEGED_DEV", "CMD_IOCTL_ENCODE", "USER_COPY", "ZONED"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("FeatureNames(0x1fe) = %v", got)
	}
	if n := FeatureNames(1 << 40); len(n) != 1 || n[0] != "BIT40" {
		t.Fatalf("unknown bit: %v", n)
	}
}

func TestBuildParams(t *testing.T) {
	good := Geometry{Size: 1 << 30, LogicalBlockSize: 512}
	opts := Options{ID: -1, Queues: 1, Depth: 128}
	tests := []struct {
		name string
		g    Geometry
		o    Options
		want string // error fragment; "" = valid
	}{
		{"defaults", good, opts, ""},
		{"zero queues", good, Options{Queues: 0, Depth: 1}, "queues 0 out of range"},
		{"too many queues", good, Options{Queues: 5000, Depth: 1}, "queues 5000"},
		{"zero depth", good, Options{Queues: 1, Depth: 0}, "queue depth 0"},
		{"depth 4096 ok", good, Options{Queues: 1, Depth: 4096}, ""},
		{"depth 4097", good, Options{Queues: 1, Depth: 4097}, "queue depth 4097"},
		{"block 1000", Geometry{Size: 1 << 20, LogicalBlockSize: 1000}, opts, "logical block size 1000"},
		{"block 8192", Geometry{Size: 1 << 20, LogicalBlockSize: 8192}, opts, "logical block size 8192"},
		{"physical smaller", Geometry{Size: 1 << 20, LogicalBlockSize: 4096, PhysicalBlockSize: 512}, opts, "physical block size"},
		{"size zero", Geometry{LogicalBlockSize: 512}, opts, "size is 0"},
		{"size not multiple", Geometry{Size: 1<<20 + 100, LogicalBlockSize: 512}, opts, "not a multiple"},
		{"max io too small", good, Options{Queues: 1, Depth: 1, MaxIOBytes: 100}, "max I/O size"},
		{"max io above target", Geometry{Size: 1 << 20, MaxIOBytes: 64 << 10}, Options{Queues: 1, Depth: 1, MaxIOBytes: 1 << 20}, "exceeds what the target"},
		{"bad discard granularity", Geometry{Size: 1 << 20, LogicalBlockSize: 4096, Discard: true, DiscardGranularity: 6144}, opts, "discard granularity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := buildParams(tt.g, tt.o)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestBuildParamsValues(t *testing.T) {
	g := Geometry{Size: 1 << 30, LogicalBlockSize: 4096, PhysicalBlockSize: 4096, VolatileCache: true, FUA: true,
		Discard: true, WriteZeroes: true, DiscardGranularity: 4096, MaxDiscardBytes: 1 << 30, MaxIOBytes: 1 << 20}
	info, p, err := buildParams(g, Options{Queues: 2, Depth: 64, UserCopy: true, Recoverable: true})
	if err != nil {
		t.Fatal(err)
	}
	if info.NrHWQueues != 2 || info.QueueDepth != 64 || info.MaxIOBufBytes != DefaultMaxIO ||
		info.Flags != FlagCmdIoctlEncode|FlagUserCopy|FlagUserRecovery|FlagUserRecoveryReissue {
		t.Fatalf("info %+v", info)
	}
	if p.types != paramTypeBasic|paramTypeDiscard || p.attrs != attrVolatileCache|attrFUA ||
		p.logicalBSShift != 12 || p.maxSectors != DefaultMaxIO>>9 || p.devSectors != 1<<21 ||
		p.maxDiscardSectors != 1<<21 || p.maxDiscardSegments != 1 || p.discardGranularity != 4096 || p.maxWriteZeroesSecs == 0 {
		t.Fatalf("params %+v", p)
	}
	// Read-only targets advertise no discard, and FUA only comes with a cache.
	_, p, _ = buildParams(Geometry{Size: 1 << 20, ReadOnly: true, Discard: true, FUA: true}, Options{Queues: 1, Depth: 1})
	if p.types != paramTypeBasic || p.attrs != attrReadOnly {
		t.Fatalf("read-only params %+v", p)
	}
}
