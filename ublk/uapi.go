package ublk

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// This file mirrors the kernel's include/uapi/linux/ublk_cmd.h (the header
// of record; layouts checked against Linux 6.12). Everything here is a pure
// function of its inputs so it can be tested on a host without ublk.

// Control commands, ioctl-encoded (_IOR/_IOWR('u', nr, struct
// ublksrv_ctrl_cmd)). Legacy numbers are refused by kernels built without
// CONFIG_BLKDEV_UBLK_LEGACY_OPCODES, so only these are used.
const (
	cmdGetQueueAffinity  = 0x80207501
	cmdGetDevInfo        = 0x80207502
	cmdAddDev            = 0xc0207504
	cmdDelDev            = 0xc0207505
	cmdStartDev          = 0xc0207506
	cmdStopDev           = 0xc0207507
	cmdSetParams         = 0xc0207508
	cmdGetParams         = 0x80207509
	cmdStartUserRecovery = 0xc0207510
	cmdEndUserRecovery   = 0xc0207511
	cmdGetFeatures       = 0x80207513
)

// I/O commands on /dev/ublkcN (_IOWR('u', nr, struct ublksrv_io_cmd)).
const (
	ioFetchReq          = 0xc0107520
	ioCommitAndFetchReq = 0xc0107521
)

// Results of FETCH / COMMIT_AND_FETCH completions.
const (
	ioResOK    = 0
	ioResAbort = -19 // -ENODEV: device stopping, do not fetch again
)

// Feature flags (dev_info.flags, GET_FEATURES).
const (
	FlagSupportZeroCopy     = 1 << 0
	FlagURingCmdCompInTask  = 1 << 1
	FlagNeedGetData         = 1 << 2
	FlagUserRecovery        = 1 << 3
	FlagUserRecoveryReissue = 1 << 4
	FlagUnprivilegedDev     = 1 << 5
	FlagCmdIoctlEncode      = 1 << 6
	FlagUserCopy            = 1 << 7
	FlagZoned               = 1 << 8
	FlagUserRecoveryFailIO  = 1 << 9
	FlagUpdateSize          = 1 << 10
	FlagAutoBufReg          = 1 << 11
	FlagQuiesce             = 1 << 12
	FlagPerIODaemon         = 1 << 13
	FlagBufRegOffDaemon     = 1 << 14
	FlagBatchIO             = 1 << 15
	FlagIntegrity           = 1 << 16
	FlagSafeStopDev         = 1 << 17
	FlagNoAutoPartScan      = 1 << 18
	FlagShmemZC             = 1 << 19
)

var featureNames = []string{
	"SUPPORT_ZERO_COPY", "URING_CMD_COMP_IN_TASK", "NEED_GET_DATA",
	"USER_RECOVERY", "USER_RECOVERY_REISSUE", "UNPRIVILEGED_DEV",
	"CMD_IOCTL_ENCODE", "USER_COPY", "ZONED", "USER_RECOVERY_FAIL_IO",
	"UPDATE_SIZE", "AUTO_BUF_REG", "QUIESCE", "PER_IO_DAEMON",
	"BUF_REG_OFF_DAEMON", "BATCH_IO", "INTEGRITY", "SAFE_STOP_DEV",
	"NO_AUTO_PART_SCAN", "SHMEM_ZC",
}

// FeatureNames returns the names of the bits set in f, in bit order;
// unknown bits are shown as BIT<n>.
func FeatureNames(f uint64) []string {
	var out []string
	for i := 0; i < 64; i++ {
		if f&(1<<i) == 0 {
			continue
		}
		if i < len(featureNames) {
			out = append(out, featureNames[i])
		} else {
			out = append(out, fmt.Sprintf("BIT%d", i))
		}
	}
	return out
}

// Device states (dev_info.state).
const (
	StateDead     = 0
	StateLive     = 1
	StateQuiesced = 2
	StateFailIO   = 3
)

// StateName names a device state.
func StateName(s uint16) string {
	switch s {
	case StateDead:
		return "dead"
	case StateLive:
		return "live"
	case StateQuiesced:
		return "quiesced"
	case StateFailIO:
		return "fail-io"
	}
	return fmt.Sprintf("state-%d", s)
}

// Request ops and flags as the kernel writes them in the descriptor.
const (
	opRead        = 0
	opWrite       = 1
	opFlush       = 2
	opDiscard     = 3
	opWriteSame   = 4
	opWriteZeroes = 5

	ioFlagFUA     = 1 << 13
	ioFlagNoUnmap = 1 << 15
)

// Param types and attributes.
const (
	paramTypeBasic   = 1 << 0
	paramTypeDiscard = 1 << 1
	paramTypeDevt    = 1 << 2

	attrReadOnly      = 1 << 0
	attrRotational    = 1 << 1
	attrVolatileCache = 1 << 2
	attrFUA           = 1 << 3
)

// Sizes and limits.
const (
	sizeofCtrlCmd  = 32
	sizeofDevInfo  = 64
	sizeofIODesc   = 24
	sizeofIOCmd    = 16
	sizeofParams   = 112 // basic + discard + devt + zoned: the 6.6..6.14 layout
	maxQueueDepth  = 4096
	maxQueues      = 4096
	maxIOBytes     = 32 << 20
	ioBufBits      = 25
	tagBits        = 16
	userCopyOffset = 0x80000000
	sectorShift    = 9
	anyDevID       = 0xFFFFFFFF
	noQueue        = 0xFFFF
)

// ctrlCmd is struct ublksrv_ctrl_cmd (32 bytes), carried in the 80-byte
// payload of an SQE128 URING_CMD.
type ctrlCmd struct {
	devID      uint32
	queueID    uint16
	length     uint16
	addr       uint64
	data       uint64
	devPathLen uint16
}

func (c *ctrlCmd) put(b []byte) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], c.devID)
	le.PutUint16(b[4:], c.queueID)
	le.PutUint16(b[6:], c.length)
	le.PutUint64(b[8:], c.addr)
	le.PutUint64(b[16:], c.data)
	le.PutUint16(b[24:], c.devPathLen)
	le.PutUint16(b[26:], 0)
	le.PutUint32(b[28:], 0)
}

// DevInfo is struct ublksrv_ctrl_dev_info (64 bytes).
type DevInfo struct {
	NrHWQueues    uint16
	QueueDepth    uint16
	State         uint16
	MaxIOBufBytes uint32
	DevID         uint32
	ServerPID     int32
	Flags         uint64
	ServerFlags   uint64 // server-private: DST stores nothing here
	OwnerUID      uint32
	OwnerGID      uint32
}

func (d *DevInfo) marshal(b *[sizeofDevInfo]byte) {
	*b = [sizeofDevInfo]byte{}
	le := binary.LittleEndian
	le.PutUint16(b[0:], d.NrHWQueues)
	le.PutUint16(b[2:], d.QueueDepth)
	le.PutUint16(b[4:], d.State)
	le.PutUint32(b[8:], d.MaxIOBufBytes)
	le.PutUint32(b[12:], d.DevID)
	le.PutUint32(b[16:], uint32(d.ServerPID))
	le.PutUint64(b[24:], d.Flags)
	le.PutUint64(b[32:], d.ServerFlags)
	le.PutUint32(b[40:], d.OwnerUID)
	le.PutUint32(b[44:], d.OwnerGID)
}

func (d *DevInfo) unmarshal(b *[sizeofDevInfo]byte) {
	le := binary.LittleEndian
	d.NrHWQueues = le.Uint16(b[0:])
	d.QueueDepth = le.Uint16(b[2:])
	d.State = le.Uint16(b[4:])
	d.MaxIOBufBytes = le.Uint32(b[8:])
	d.DevID = le.Uint32(b[12:])
	d.ServerPID = int32(le.Uint32(b[16:]))
	d.Flags = le.Uint64(b[24:])
	d.ServerFlags = le.Uint64(b[32:])
	d.OwnerUID = le.Uint32(b[40:])
	d.OwnerGID = le.Uint32(b[44:])
}

// kparams is the subset of struct ublk_params DST sets or reads.
type kparams struct {
	types uint32
	// basic
	attrs           uint32
	logicalBSShift  uint8
	physicalBSShift uint8
	ioOptShift      uint8
	ioMinShift      uint8
	maxSectors      uint32
	chunkSectors    uint32
	devSectors      uint64
	virtBoundary    uint64
	// discard
	discardAlignment   uint32
	discardGranularity uint32
	maxDiscardSectors  uint32
	maxWriteZeroesSecs uint32
	maxDiscardSegments uint16
	// devt (read-only, GET_PARAMS)
	charMajor, charMinor, diskMajor, diskMinor uint32
}

func (p *kparams) marshal(b *[sizeofParams]byte) {
	*b = [sizeofParams]byte{}
	le := binary.LittleEndian
	le.PutUint32(b[0:], sizeofParams)
	le.PutUint32(b[4:], p.types)
	bs := b[8:]
	le.PutUint32(bs[0:], p.attrs)
	bs[4] = p.logicalBSShift
	bs[5] = p.physicalBSShift
	bs[6] = p.ioOptShift
	bs[7] = p.ioMinShift
	le.PutUint32(bs[8:], p.maxSectors)
	le.PutUint32(bs[12:], p.chunkSectors)
	le.PutUint64(bs[16:], p.devSectors)
	le.PutUint64(bs[24:], p.virtBoundary)
	ds := b[40:]
	le.PutUint32(ds[0:], p.discardAlignment)
	le.PutUint32(ds[4:], p.discardGranularity)
	le.PutUint32(ds[8:], p.maxDiscardSectors)
	le.PutUint32(ds[12:], p.maxWriteZeroesSecs)
	le.PutUint16(ds[16:], p.maxDiscardSegments)
}

func (p *kparams) unmarshal(b *[sizeofParams]byte) {
	le := binary.LittleEndian
	p.types = le.Uint32(b[4:])
	bs := b[8:]
	p.attrs = le.Uint32(bs[0:])
	p.logicalBSShift = bs[4]
	p.physicalBSShift = bs[5]
	p.ioOptShift = bs[6]
	p.ioMinShift = bs[7]
	p.maxSectors = le.Uint32(bs[8:])
	p.chunkSectors = le.Uint32(bs[12:])
	p.devSectors = le.Uint64(bs[16:])
	p.virtBoundary = le.Uint64(bs[24:])
	ds := b[40:]
	p.discardAlignment = le.Uint32(ds[0:])
	p.discardGranularity = le.Uint32(ds[4:])
	p.maxDiscardSectors = le.Uint32(ds[8:])
	p.maxWriteZeroesSecs = le.Uint32(ds[12:])
	p.maxDiscardSegments = le.Uint16(ds[16:])
	dv := b[60:]
	p.charMajor = le.Uint32(dv[0:])
	p.charMinor = le.Uint32(dv[4:])
	p.diskMajor = le.Uint32(dv[8:])
	p.diskMinor = le.Uint32(dv[12:])
}

// putIOCmd encodes struct ublksrv_io_cmd into an SQE's 16-byte payload.
func putIOCmd(b *[16]byte, qid, tag uint16, result int32, addr uint64) {
	le := binary.LittleEndian
	le.PutUint16(b[0:], qid)
	le.PutUint16(b[2:], tag)
	le.PutUint32(b[4:], uint32(result))
	le.PutUint64(b[8:], addr)
}

// ioDesc is struct ublksrv_io_desc as the kernel writes it (read-only mmap).
type ioDesc struct {
	opFlags     uint32
	nrSectors   uint32
	startSector uint64
	addr        uint64
}

// descStride is the distance between two queues' descriptor arrays in the
// char device's mmap space (UBLK_MAX_QUEUE_DEPTH descriptors, page aligned).
func descStride(pageSize int) int64 {
	return int64(roundUp(maxQueueDepth*sizeofIODesc, pageSize))
}

// descLen is the mmap length of one queue's descriptor array.
func descLen(depth, pageSize int) int {
	return roundUp(depth*sizeofIODesc, pageSize)
}

// userCopyOff is the char-device file offset that reaches byte 0 of the
// request buffer of (qid, tag) in USER_COPY mode.
func userCopyOff(qid, tag uint16) int64 {
	return userCopyOffset + int64(qid)<<(ioBufBits+tagBits) + int64(tag)<<ioBufBits
}

func roundUp(n, to int) int { return (n + to - 1) / to * to }

func flagsString(f uint64) string { return strings.Join(FeatureNames(f), "|") }
