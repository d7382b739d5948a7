//go:build linux

package ublk

// Recovery hands a device created with USER_RECOVERY (Options.Recoverable)
// from a dead daemon to a new one, and Detach makes a live daemon leave it
// that way on purpose (a planned upgrade).
//
//	old daemon dies (or Detach)     the kernel cancels its parked fetches,
//	                                requeues what it had in flight (REISSUE)
//	                                and quiesces the disk: LIVE -> QUIESCED,
//	                                I/O waits in the block layer
//	Recover: GET_DEV_INFO           flags must hold USER_RECOVERY, state not DEAD
//	         GET_PARAMS             the target must have the device's geometry
//	         START_USER_RECOVERY    EBUSY until the old /dev/ublkcN is closed
//	                                and the device quiesced: retried up to Wait
//	         open /dev/ublkcN, queues (mmap, FETCH every tag)   = Create's
//	         END_USER_RECOVERY      new pid; unquiesce; requeued I/O flows
//
// Linux 6.12 resets the queues at START_USER_RECOVERY and accepts it only
// while some queue of the old daemon was ready: a recovering process that
// dies between START and END leaves a device that only STOP_DEV/DEL_DEV
// (`dst del`) removes. Everything that can fail (opening the file, dialing
// the exporter, checking the geometry) is therefore done before START.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoRecoveryFeature: the kernel cannot keep a device across its
// daemon's death.
var ErrNoRecoveryFeature = errors.New("this kernel has no ublk user recovery (UBLK_F_USER_RECOVERY needs Linux 6.1 or later)")

// RefusedError is a recovery refused before anything was changed.
type RefusedError struct {
	ID     uint32
	Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("cannot recover device %d: %s", e.ID, e.Reason)
}

func refused(id uint32, format string, a ...any) error {
	return &RefusedError{ID: id, Reason: fmt.Sprintf(format, a...)}
}

// CheckRecoverable says whether the kernel's view of a device allows a new
// daemon to take it over: it must have been created with USER_RECOVERY and
// must not be dead. A LIVE device passes (its daemon may be dying; Recover
// waits for the kernel to quiesce it); whether a live daemon still owns it
// is for the caller to decide.
func CheckRecoverable(info DevInfo) error {
	id := info.DevID
	if info.Flags&FlagUserRecovery == 0 {
		return refused(id, "it was created without --recoverable (no UBLK_F_USER_RECOVERY), so the kernel does not keep it for a new daemon; remove it with `dst del %d`", id)
	}
	switch info.State {
	case StateDead:
		return refused(id, "it is dead (stopped, no disk): there is nothing to take over; remove it with `dst del %d`", id)
	case StateLive, StateQuiesced, StateFailIO:
		return nil
	}
	return refused(id, "unknown device state %d", info.State)
}

// checkGeometry compares what the kernel keeps of the device (GET_PARAMS)
// with what the target offers; any difference is a refusal (a recovered
// device cannot change its parameters).
func checkGeometry(info DevInfo, p kparams, g Geometry) error {
	var diffs []string
	if size := p.devSectors << sectorShift; size != g.Size {
		diffs = append(diffs, fmt.Sprintf("size: device %d bytes, target %d", size, g.Size))
	}
	lbs := g.LogicalBlockSize
	if lbs == 0 {
		lbs = 512
	}
	if dev := uint32(1) << p.logicalBSShift; dev != lbs {
		diffs = append(diffs, fmt.Sprintf("logical block size: device %d, target %d", dev, lbs))
	}
	if ro := p.attrs&attrReadOnly != 0; ro != g.ReadOnly {
		diffs = append(diffs, fmt.Sprintf("read-only: device %v, target %v", ro, g.ReadOnly))
	}
	if maxIO := p.maxSectors << sectorShift; g.MaxIOBytes != 0 && g.MaxIOBytes < maxIO {
		diffs = append(diffs, fmt.Sprintf("largest request: device %d bytes, target accepts %d", maxIO, g.MaxIOBytes))
	}
	if p.types&paramTypeDiscard != 0 {
		if p.maxDiscardSectors != 0 && !g.Discard {
			diffs = append(diffs, "the device advertises discard, the target cannot")
		}
		if p.maxWriteZeroesSecs != 0 && !g.WriteZeroes {
			diffs = append(diffs, "the device advertises write-zeroes, the target cannot")
		}
	}
	if len(diffs) > 0 {
		return refused(info.DevID, "the target does not match the device (%s)", strings.Join(diffs, "; "))
	}
	return nil
}

// RecoverOptions tune Recover.
type RecoverOptions struct {
	// Wait bounds the wait for the kernel to release the device from its
	// dead daemon (default 30s).
	Wait time.Duration
}

// RecoverTimes tells where a Recover spent its time.
type RecoverTimes struct {
	// Released: from the first START_USER_RECOVERY to the one the kernel
	// accepted (it answers EBUSY while the dead daemon's /dev/ublkcN is
	// still open or the device not yet quiesced).
	Released time.Duration
	// Serving: from START_USER_RECOVERY accepted to END_USER_RECOVERY
	// returned: queues set up, every tag fetched, the disk unquiesced. The
	// requests that waited are being served from then on.
	Serving time.Duration
}

// Recover takes over device id, served from now on by t. The device keeps
// its queues, depth and parameters; t must match its geometry. On a
// refusal (*RefusedError) nothing was changed.
func Recover(ctx context.Context, ctrl *Control, id uint32, t Target, o RecoverOptions) (d *Device, err error) {
	if o.Wait <= 0 {
		o.Wait = 30 * time.Second
	}
	info, err := CheckTarget(ctrl, id, t)
	if err != nil {
		return nil, err
	}
	var times RecoverTimes
	start := time.Now()
	if err := startRecovery(ctx, ctrl, info, o.Wait); err != nil {
		return nil, err
	}
	accepted := time.Now()
	times.Released = accepted.Sub(start)

	d = &Device{ctrl: ctrl, info: info, target: t, done: make(chan struct{})}
	if err := d.openQueues(ctx); err != nil {
		d.abandon()
		return nil, fmt.Errorf("device %d is left quiesced (retry dst recover, or dst del %d): %w", id, id, err)
	}
	if err := ctrl.EndUserRecovery(ctx, id, os.Getpid()); err != nil {
		d.abandon()
		return nil, fmt.Errorf("device %d is left quiesced (retry dst recover, or dst del %d): %w", id, id, err)
	}
	times.Serving = time.Since(accepted)
	d.recovered = times
	if got, err := ctrl.DevInfo(id); err == nil {
		d.info = got
	}
	return d, nil
}

// CheckTarget tells, changing nothing, whether t can take device id over:
// the device must be recoverable and not dead (CheckRecoverable), and t
// must have its geometry. It returns the device's info.
func CheckTarget(ctrl *Control, id uint32, t Target) (DevInfo, error) {
	info, err := ctrl.DevInfo(id)
	if err != nil {
		if errors.Is(err, unix.ENODEV) {
			return info, refused(id, "there is no such device")
		}
		return info, err
	}
	if err := CheckRecoverable(info); err != nil {
		return info, err
	}
	p, err := ctrl.getParams(id)
	if err != nil {
		return info, err
	}
	return info, checkGeometry(info, p, t.Geometry())
}

// startRecovery sends START_USER_RECOVERY until the kernel accepts it or
// wait has passed.
func startRecovery(ctx context.Context, ctrl *Control, info DevInfo, wait time.Duration) error {
	id := info.DevID
	deadline := time.Now().Add(wait)
	for {
		err := ctrl.StartUserRecovery(context.Background(), id)
		if err == nil {
			return nil
		}
		switch {
		case errors.Is(err, unix.EINVAL):
			return fmt.Errorf("%w: the kernel has no ready queue to take over (did an earlier recovery die half-way? Linux 6.12 cannot resume that one: dst del %d)", err, id)
		case errors.Is(err, unix.ENODEV):
			return refused(id, "the device disappeared")
		case !errors.Is(err, unix.EBUSY):
			return err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			cur, ierr := ctrl.DevInfo(id)
			if ierr == nil && cur.State == StateLive {
				return refused(id, "it is still live after %s: its daemon (pid %d) has not let go of it%s", wait, cur.ServerPID, holdersString(id))
			}
			return refused(id, "%s is still open after %s%s", CharPath(id), wait, holdersString(id))
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// abandon tears down queues that came up during a failed recovery without
// touching the device: it stays quiesced for the next attempt.
func (d *Device) abandon() {
	for _, q := range d.queues {
		q.requestAbandon()
	}
	d.wg.Wait()
	for _, q := range d.queues {
		q.closeWake()
	}
	if d.char != nil {
		d.char.Close()
	}
}

// Recovered reports the timings of the Recover that made d (zero for a
// device made by Create).
func (d *Device) Recovered() RecoverTimes { return d.recovered }

// DetachReport says what a Detach left to the next daemon.
type DetachReport struct {
	Parked    int // requests that arrived during the detach, left unstarted
	Abandoned int // requests the target still held when ctx expired
}

// Detach leaves a recoverable device to a later Recover (a planned
// upgrade): the queues stop starting requests (those that arrive are left
// to the next daemon), the requests the target holds are completed (until
// ctx expires; those still held then are left too), and the rings and
// /dev/ublkcN are closed. There is no STOP_DEV: the kernel handles the
// closed device as it handles a daemon's death (Linux 6.12 has no
// QUIESCE_DEV): it requeues what was left and quiesces the disk, whose I/O
// then waits for the next daemon. The target is closed.
func (d *Device) Detach(ctx context.Context) (DetachReport, error) {
	var rep DetachReport
	if d.info.Flags&FlagUserRecovery == 0 {
		return rep, fmt.Errorf("device %d is not recoverable: it cannot be left for a new daemon", d.info.DevID)
	}
	if d.stopped {
		return rep, nil
	}
	d.stopped = true
	for _, q := range d.queues {
		q.requestDetach()
	}
	select {
	case <-d.done:
	case <-ctx.Done():
		for _, q := range d.queues {
			q.requestAbandon()
		}
		<-d.done
	}
	var errs []error
	for _, q := range d.queues {
		q.closeWake()
		rep.Parked += q.parked
		rep.Abandoned += q.held
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
	return rep, errors.Join(errs...)
}

// Holders returns the processes that have /dev/ublkcN of device id open
// (from /proc/*/fd; empty when it cannot tell).
func Holders(id uint32) []int {
	want := CharPath(id)
	procs, _ := filepath.Glob("/proc/[0-9]*/fd")
	var pids []int
	for _, dir := range procs {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && l == want {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

func holdersString(id uint32) string {
	pids := Holders(id)
	if len(pids) == 0 {
		return ""
	}
	s := make([]string, len(pids))
	for i, p := range pids {
		s[i] = strconv.Itoa(p)
	}
	return fmt.Sprintf(" (held open by pid %s)", strings.Join(s, ", "))
}
