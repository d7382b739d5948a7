package ublk

import (
	"fmt"
	"math/bits"
	"os"
)

// Options configure a device beyond what its target decides.
type Options struct {
	ID         int    // device id, or -1 for the kernel's choice
	Queues     int    // hardware queues, 1..4096 (the kernel clamps to the CPU count)
	Depth      int    // requests in flight per queue, 1..4096
	MaxIOBytes uint32 // largest request; 0 = min(target's, DefaultMaxIO)
	UserCopy   bool   // move data with pread/pwrite on /dev/ublkcN instead of kernel copies
	// Recoverable creates the device with USER_RECOVERY|USER_RECOVERY_REISSUE:
	// it survives the daemon's death (quiesced) until `dst recover`.
	Recoverable bool
}

// Defaults.
const (
	DefaultQueues = 1
	DefaultDepth  = 128
	DefaultMaxIO  = 512 << 10
)

// MaxDepth and MaxQueues are the kernel's limits.
const (
	MaxDepth  = maxQueueDepth
	MaxQueues = maxQueues
)

// buildParams validates a target's geometry and the options and turns them
// into the ADD_DEV info and SET_PARAMS parameters. It is a pure function so
// every rule is testable without the driver.
func buildParams(g Geometry, o Options) (DevInfo, kparams, error) {
	var info DevInfo
	var p kparams
	if o.Queues < 1 || o.Queues > MaxQueues {
		return info, p, fmt.Errorf("queues %d out of range: need 1..%d", o.Queues, MaxQueues)
	}
	if o.Depth < 1 || o.Depth > MaxDepth {
		return info, p, fmt.Errorf("queue depth %d out of range: need 1..%d", o.Depth, MaxDepth)
	}
	lbs := g.LogicalBlockSize
	if lbs == 0 {
		lbs = 512
	}
	page := uint32(os.Getpagesize())
	if lbs < 512 || lbs > page || bits.OnesCount32(lbs) != 1 {
		return info, p, fmt.Errorf("logical block size %d invalid: need a power of two from 512 to %d", lbs, page)
	}
	pbs := g.PhysicalBlockSize
	if pbs == 0 {
		pbs = lbs
	}
	if pbs < lbs || bits.OnesCount32(pbs) != 1 || pbs > 1<<16 {
		return info, p, fmt.Errorf("physical block size %d invalid: need a power of two from %d (the logical block size) to 65536", pbs, lbs)
	}
	if g.Size == 0 {
		return info, p, fmt.Errorf("device size is 0")
	}
	if g.Size%uint64(lbs) != 0 {
		return info, p, fmt.Errorf("device size %d is not a multiple of the block size %d", g.Size, lbs)
	}
	maxIO := o.MaxIOBytes
	if maxIO == 0 {
		maxIO = DefaultMaxIO
		if g.MaxIOBytes != 0 && g.MaxIOBytes < maxIO {
			maxIO = g.MaxIOBytes
		}
	}
	if g.MaxIOBytes != 0 && maxIO > g.MaxIOBytes {
		return info, p, fmt.Errorf("max I/O size %d exceeds what the target accepts (%d)", maxIO, g.MaxIOBytes)
	}
	maxIO = maxIO / page * page
	if maxIO < page || maxIO > maxIOBytes {
		return info, p, fmt.Errorf("max I/O size %d invalid: need %d..%d bytes", o.MaxIOBytes, page, maxIOBytes)
	}

	info = DevInfo{
		NrHWQueues:    uint16(o.Queues),
		QueueDepth:    uint16(o.Depth),
		MaxIOBufBytes: maxIO,
		Flags:         FlagCmdIoctlEncode,
	}
	if o.UserCopy {
		info.Flags |= FlagUserCopy
	}
	if o.Recoverable {
		info.Flags |= FlagUserRecovery | FlagUserRecoveryReissue
	}

	p.types = paramTypeBasic
	if g.ReadOnly {
		p.attrs |= attrReadOnly
	}
	if g.Rotational {
		p.attrs |= attrRotational
	}
	if g.VolatileCache {
		p.attrs |= attrVolatileCache
		if g.FUA {
			p.attrs |= attrFUA
		}
	}
	p.logicalBSShift = uint8(bits.TrailingZeros32(lbs))
	p.physicalBSShift = uint8(bits.TrailingZeros32(pbs))
	p.ioMinShift = p.logicalBSShift
	p.ioOptShift = p.physicalBSShift
	p.maxSectors = maxIO >> sectorShift
	p.devSectors = g.Size >> sectorShift

	if (g.Discard || g.WriteZeroes) && !g.ReadOnly {
		gran := g.DiscardGranularity
		if gran == 0 {
			gran = pbs
		}
		if gran%lbs != 0 || bits.OnesCount32(gran) != 1 {
			return info, p, fmt.Errorf("discard granularity %d invalid: need a power-of-two multiple of %d", gran, lbs)
		}
		p.types |= paramTypeDiscard
		p.discardGranularity = gran
		// A discard or write-zeroes request is a single range; the kernel
		// limit is a u32 count of sectors.
		const maxSecs = 1<<32 - 1
		if g.Discard {
			p.maxDiscardSectors = capSectors(g.MaxDiscardBytes, maxSecs)
			p.maxDiscardSegments = 1
		}
		if g.WriteZeroes {
			p.maxWriteZeroesSecs = capSectors(g.MaxWriteZeroesBytes, maxSecs)
		}
	}
	return info, p, nil
}

func capSectors(bytes uint64, limit uint32) uint32 {
	s := bytes >> sectorShift
	if bytes == 0 || s > uint64(limit) {
		// No limit from the target: a large value the block layer splits.
		return 1 << 22 // 2 GiB
	}
	return uint32(s)
}
