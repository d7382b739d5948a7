//go:build linux

package ublk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Device is a running ublk device served by this process.
//
// Life: Create (ADD_DEV, SET_PARAMS, queues fetch, START_DEV) -> serve ->
// Stop (STOP_DEV: the kernel drains in-flight I/O through the queues, then
// aborts the parked fetches; queues exit; rings, mappings and the char
// device are closed) -> Delete (DEL_DEV, which waits for the last reference
// to /dev/ublkcN, hence after Stop). A recoverable device may instead be
// left with Detach (or by the process's death) and taken over by another
// process with Recover (recover.go).
type Device struct {
	ctrl   *Control
	info   DevInfo
	target Target
	char   *os.File
	queues []*queue

	wg        sync.WaitGroup
	done      chan struct{}
	errMu     sync.Mutex
	qErr      error
	stopped   bool
	recovered RecoverTimes
}

// BlockPath is /dev/ublkbN for device id.
func BlockPath(id uint32) string { return fmt.Sprintf("/dev/ublkb%d", id) }

// CharPath is /dev/ublkcN for device id.
func CharPath(id uint32) string { return fmt.Sprintf("/dev/ublkc%d", id) }

// Create adds, configures and starts a device served by t. On error nothing
// is left behind: the device is deleted again.
func Create(ctx context.Context, ctrl *Control, t Target, o Options) (d *Device, err error) {
	g := t.Geometry()
	want, params, err := buildParams(g, o)
	if err != nil {
		return nil, err
	}
	if o.Recoverable {
		if f, err := ctrl.Features(); err == nil && f&FlagUserRecovery == 0 {
			return nil, ErrNoRecoveryFeature
		}
	}
	info, err := ctrl.AddDev(o.ID, want)
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("%w: device id %d is taken (pick another --id, or omit it)", err, o.ID)
		}
		return nil, err
	}
	d = &Device{ctrl: ctrl, info: info, target: t, done: make(chan struct{})}
	defer func() {
		if err != nil {
			d.abort()
		}
	}()
	if want.Flags&FlagUserCopy != 0 && info.Flags&FlagUserCopy == 0 {
		return nil, fmt.Errorf("the kernel did not grant USER_COPY (granted %s)", flagsString(info.Flags))
	}
	if want.Flags&FlagUserRecovery != 0 && info.Flags&FlagUserRecovery == 0 {
		return nil, fmt.Errorf("the kernel did not grant USER_RECOVERY (granted %s)", flagsString(info.Flags))
	}
	if err := ctrl.setParams(info.DevID, &params); err != nil {
		return nil, err
	}
	if err := d.openQueues(ctx); err != nil {
		return nil, err
	}
	if err := ctrl.StartDev(ctx, info.DevID, os.Getpid()); err != nil {
		return nil, err
	}
	if err := waitNode(ctx, BlockPath(info.DevID)); err != nil {
		return nil, err
	}
	return d, nil
}

// openQueues opens /dev/ublkcN and starts the queues: every tag of every
// queue has a FETCH_REQ in the kernel when it returns. Shared by Create
// (before START_DEV) and Recover (before END_USER_RECOVERY).
func (d *Device) openQueues(ctx context.Context) error {
	path := CharPath(d.info.DevID)
	if err := waitNode(ctx, path); err != nil {
		return err
	}
	var err error
	d.char, err = os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("open %s: %w: another process has it open%s", path, err, holdersString(d.info.DevID))
		}
		return fmt.Errorf("open %s: %w", path, err)
	}
	return d.startQueues()
}

// startQueues starts one locked goroutine per queue and waits until every
// queue has queued its FETCH_REQs (or one failed).
func (d *Device) startQueues() error {
	n := int(d.info.NrHWQueues)
	ready := make(chan error, n)
	userCopy := d.info.Flags&FlagUserCopy != 0
	for i := range n {
		q := newQueue(uint16(i), int(d.info.QueueDepth), int(d.info.MaxIOBufBytes), userCopy, int(d.char.Fd()), d.info.DevID)
		d.queues = append(d.queues, q)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			// Locked for life: the kernel ties the queue to this thread, and
			// PR_SET_IO_FLUSHER must not leak to other goroutines, so the
			// thread exits with the goroutine (never UnlockOSThread).
			runtime.LockOSThread()
			if err := q.setup(d.target); err != nil {
				q.teardown()
				ready <- err
				return
			}
			ready <- nil
			q.run()
			q.teardown()
			if q.err != nil {
				d.errMu.Lock()
				d.qErr = errors.Join(d.qErr, q.err)
				d.errMu.Unlock()
			}
		}()
	}
	go func() { d.wg.Wait(); close(d.done) }()
	var errs []error
	for range n {
		if err := <-ready; err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// abort tears down a device that failed to come up.
func (d *Device) abort() {
	for _, q := range d.queues {
		q.requestStop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.ctrl.StopDev(ctx, d.info.DevID) //nolint:errcheck // may not have started
	d.wg.Wait()
	for _, q := range d.queues {
		q.closeWake()
	}
	if d.char != nil {
		d.char.Close()
	}
	d.ctrl.DelDev(ctx, d.info.DevID) //nolint:errcheck // best effort on an error path
}

// ID returns the device id.
func (d *Device) ID() uint32 { return d.info.DevID }

// Info returns what the kernel granted at ADD_DEV.
func (d *Device) Info() DevInfo { return d.info }

// Path returns /dev/ublkbN.
func (d *Device) Path() string { return BlockPath(d.info.DevID) }

// Done is closed when every queue has exited: after Stop, or when the
// device was stopped from outside (`dst del`).
func (d *Device) Done() <-chan struct{} { return d.done }

// Stop removes the block device and stops the queues. In-flight requests
// are served to the end first. Stop then closes the target.
func (d *Device) Stop(ctx context.Context) error {
	if d.stopped {
		return nil
	}
	d.stopped = true
	var errs []error
	if err := d.ctrl.StopDev(ctx, d.info.DevID); err != nil && !errors.Is(err, unix.ENODEV) {
		errs = append(errs, err)
		// The queues will not be aborted by the kernel: make them leave.
		for _, q := range d.queues {
			q.requestStop()
		}
	}
	select {
	case <-d.done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("queues of device %d did not stop: %w", d.info.DevID, ctx.Err()))
		return errors.Join(errs...)
	}
	for _, q := range d.queues {
		q.closeWake()
	}
	d.errMu.Lock()
	if d.qErr != nil {
		errs = append(errs, d.qErr)
	}
	d.errMu.Unlock()
	if err := d.char.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := d.target.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close target: %w", err))
	}
	return errors.Join(errs...)
}

// Delete deletes the stopped device.
func (d *Device) Delete(ctx context.Context) error {
	return d.ctrl.DelDev(ctx, d.info.DevID)
}

// Remove stops and deletes device id from any process: the way out for a
// device whose daemon died (`dst del`).
func Remove(ctx context.Context, ctrl *Control, id uint32) error {
	var errs []error
	if err := ctrl.StopDev(ctx, id); err != nil && !errors.Is(err, unix.ENODEV) {
		errs = append(errs, err)
	}
	if err := ctrl.DelDev(ctx, id); err != nil {
		errs = append(errs, err)
		return errors.Join(errs...)
	}
	return nil
}

// waitNode waits for devtmpfs/udev to create path.
func waitNode(ctx context.Context, path string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within 10s (is devtmpfs or udev running?)", path)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", path, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
