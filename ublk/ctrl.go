//go:build linux

package ublk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dst-dev/dst/internal/uring"
)

// ControlPath is the ublk driver's control node.
const ControlPath = "/dev/ublk-control"

// ErrNoDriver means the kernel has no ublk driver loaded.
var ErrNoDriver = errors.New(ControlPath + " is missing: load the driver with `modprobe ublk_drv`, or use a kernel built with CONFIG_BLK_DEV_UBLK")

// CmdError is a control command the kernel refused.
type CmdError struct {
	Cmd   string
	DevID uint32
	Errno syscall.Errno
}

func (e *CmdError) Error() string {
	dev := ""
	if e.DevID != anyDevID {
		dev = fmt.Sprintf(" for device %d", e.DevID)
	}
	return fmt.Sprintf("ublk %s%s: %v (errno %d)", e.Cmd, dev, e.Errno, int(e.Errno))
}

func (e *CmdError) Unwrap() error { return e.Errno }

// Control sends control commands to the ublk driver through an SQE128
// io_uring on /dev/ublk-control. Commands are serialised; a Control may be
// used from any goroutine.
type Control struct {
	mu   sync.Mutex
	f    *os.File
	ring *uring.Ring
	cqe  [1]uring.CQE
	// Command payloads the kernel reads or fills from a worker thread: they
	// live here, on the heap, until the command's CQE is reaped.
	info     [sizeofDevInfo]byte
	params   [sizeofParams]byte
	features uint64
	affinity [128]byte
	broken   error
}

// OpenControl opens the ublk control device.
func OpenControl() (*Control, error) {
	f, err := os.OpenFile(ControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist):
			return nil, ErrNoDriver
		case errors.Is(err, os.ErrPermission):
			return nil, fmt.Errorf("open %s: permission denied: run dst as root (creating ublk devices needs CAP_SYS_ADMIN)", ControlPath)
		}
		return nil, fmt.Errorf("open %s: %w", ControlPath, err)
	}
	r, err := uring.New(uring.Options{Entries: 4, SQE128: true})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ublk control ring: %w", err)
	}
	return &Control{f: f, ring: r}, nil
}

// Close releases the control device.
func (c *Control) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken == nil {
		c.ring.Close()
	} // else a command may still be running in the kernel: leave it to exit
	return c.f.Close()
}

// exec sends one command and waits for its result. Commands that can block
// (START_DEV, STOP_DEV, DEL_DEV) are bounded by ctx; on expiry the Control
// is marked broken, because the kernel may still write into its buffers.
// The caller holds c.mu across marshalling, exec and unmarshalling.
func (c *Control) exec(ctx context.Context, name string, op uint32, cmd ctrlCmd) (int32, error) {
	if c.broken != nil {
		return 0, c.broken
	}
	s := c.ring.GetSQE()
	s.PrepURingCmd(int(c.f.Fd()), op)
	cmd.put(c.ring.Cmd80(s)[:sizeofCtrlCmd])
	s.SetUserData(uint64(op))
	for {
		n, err := c.ring.Wait(c.cqe[:], int64(100*time.Millisecond))
		if n == 1 {
			break
		}
		if err != nil && !errors.Is(err, uring.ErrTimeout) {
			c.broken = fmt.Errorf("ublk %s: %w", name, err)
			return 0, c.broken
		}
		if ctx.Err() != nil {
			c.broken = fmt.Errorf("ublk %s: gave up waiting for the kernel (%w); is the device still open? (fuser -v /dev/ublkb%d)", name, ctx.Err(), cmd.devID)
			return 0, c.broken
		}
	}
	if res := c.cqe[0].Res; res < 0 {
		return res, &CmdError{Cmd: name, DevID: cmd.devID, Errno: syscall.Errno(-res)}
	}
	return c.cqe[0].Res, nil
}

func (c *Control) addr(p unsafe.Pointer) uint64 { return uint64(uintptr(p)) }

// Features asks the driver which features it supports (Linux 6.5+).
func (c *Control) Features() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.exec(context.Background(), "GET_FEATURES", cmdGetFeatures, ctrlCmd{
		devID: anyDevID, queueID: noQueue, length: 8, addr: c.addr(unsafe.Pointer(&c.features)),
	})
	return c.features, err
}

// AddDev creates a device (id < 0: the kernel picks one) and returns what
// the kernel granted: the id, the negotiated flags and the queue count.
func (c *Control) AddDev(id int, want DevInfo) (DevInfo, error) {
	devID := uint32(anyDevID)
	if id >= 0 {
		devID = uint32(id)
	}
	want.DevID = devID
	c.mu.Lock()
	defer c.mu.Unlock()
	want.marshal(&c.info)
	_, err := c.exec(context.Background(), "ADD_DEV", cmdAddDev, ctrlCmd{
		devID: devID, queueID: noQueue, length: sizeofDevInfo, addr: c.addr(unsafe.Pointer(&c.info)),
	})
	if err != nil {
		return DevInfo{}, err
	}
	var got DevInfo
	got.unmarshal(&c.info)
	return got, nil
}

// DevInfo reads a device's info.
func (c *Control) DevInfo(id uint32) (DevInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.exec(context.Background(), "GET_DEV_INFO", cmdGetDevInfo, ctrlCmd{
		devID: id, queueID: noQueue, length: sizeofDevInfo, addr: c.addr(unsafe.Pointer(&c.info)),
	})
	if err != nil {
		return DevInfo{}, err
	}
	var got DevInfo
	got.unmarshal(&c.info)
	return got, nil
}

func (c *Control) setParams(id uint32, p *kparams) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p.marshal(&c.params)
	_, err := c.exec(context.Background(), "SET_PARAMS", cmdSetParams, ctrlCmd{
		devID: id, queueID: noQueue, length: sizeofParams, addr: c.addr(unsafe.Pointer(&c.params)),
	})
	return err
}

func (c *Control) getParams(id uint32) (kparams, error) {
	var p kparams
	c.mu.Lock()
	defer c.mu.Unlock()
	c.params = [sizeofParams]byte{}
	*(*uint32)(unsafe.Pointer(&c.params[0])) = sizeofParams
	_, err := c.exec(context.Background(), "GET_PARAMS", cmdGetParams, ctrlCmd{
		devID: id, queueID: noQueue, length: sizeofParams, addr: c.addr(unsafe.Pointer(&c.params)),
	})
	if err != nil {
		return p, err
	}
	p.unmarshal(&c.params)
	return p, nil
}

// Size returns a device's size in bytes (from GET_PARAMS).
func (c *Control) Size(id uint32) (uint64, error) {
	p, err := c.getParams(id)
	return p.devSectors << sectorShift, err
}

// StartDev makes the block device appear; it returns when every queue has
// fetched all its tags and the disk is added.
func (c *Control) StartDev(ctx context.Context, id uint32, pid int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.exec(ctx, "START_DEV", cmdStartDev, ctrlCmd{devID: id, queueID: noQueue, data: uint64(pid)})
	return err
}

// StopDev removes the block device; in-flight I/O drains through the
// queues first.
func (c *Control) StopDev(ctx context.Context, id uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.exec(ctx, "STOP_DEV", cmdStopDev, ctrlCmd{devID: id, queueID: noQueue})
	return err
}

// DelDev deletes the device; it waits until nothing holds /dev/ublkcN.
func (c *Control) DelDev(ctx context.Context, id uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.exec(ctx, "DEL_DEV", cmdDelDev, ctrlCmd{devID: id, queueID: noQueue})
	return err
}

// StartUserRecovery and EndUserRecovery hand a quiesced device to a new
// server process (devices created with FlagUserRecovery).
func (c *Control) StartUserRecovery(ctx context.Context, id uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.exec(ctx, "START_USER_RECOVERY", cmdStartUserRecovery, ctrlCmd{devID: id, queueID: noQueue})
	return err
}

func (c *Control) EndUserRecovery(ctx context.Context, id uint32, pid int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.exec(ctx, "END_USER_RECOVERY", cmdEndUserRecovery, ctrlCmd{devID: id, queueID: noQueue, data: uint64(pid)})
	return err
}

// Devices lists the ids of existing ublk devices (from /dev/ublkcN nodes
// and sysfs).
func Devices() ([]uint32, error) {
	ents, err := os.ReadDir("/sys/class/ublk-char")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var ids []uint32
	for _, e := range ents {
		var id uint32
		if _, err := fmt.Sscanf(e.Name(), "ublkc%d", &id); err == nil {
			ids = append(ids, id)
		}
	}
	return ids, nil
}
