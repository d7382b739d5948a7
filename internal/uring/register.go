//go:build linux

package uring

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

func (r *Ring) register(op uintptr, arg unsafe.Pointer, n int) error {
	if r.closed {
		return ErrClosed
	}
	for {
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), op, uintptr(arg), uintptr(n), 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// RegisterFiles registers fds so SQEs can name them by index with
// SQEFixedFile, which saves a file lookup per request.
func (r *Ring) RegisterFiles(fds []int32) error {
	if len(fds) == 0 {
		return fmt.Errorf("uring: register files: empty list")
	}
	if err := r.register(registerFiles, unsafe.Pointer(&fds[0]), len(fds)); err != nil {
		return fmt.Errorf("uring: register %d files: %w", len(fds), err)
	}
	return nil
}

// UnregisterFiles drops the registered file table.
func (r *Ring) UnregisterFiles() error {
	if err := r.register(unregisterFiles, nil, 0); err != nil {
		return fmt.Errorf("uring: unregister files: %w", err)
	}
	return nil
}

// RegisterBuffers pins bufs in the kernel for READ_FIXED/WRITE_FIXED, which
// saves pinning pages per request. The buffers must stay allocated until
// UnregisterBuffers or Close (mmap'd or heap memory kept referenced).
func (r *Ring) RegisterBuffers(bufs [][]byte) error {
	if len(bufs) == 0 {
		return fmt.Errorf("uring: register buffers: empty list")
	}
	iovs := make([]unix.Iovec, len(bufs))
	for i, b := range bufs {
		if len(b) == 0 {
			return fmt.Errorf("uring: register buffers: buffer %d is empty", i)
		}
		iovs[i].Base = &b[0]
		iovs[i].SetLen(len(b))
	}
	if err := r.register(registerBuffers, unsafe.Pointer(&iovs[0]), len(iovs)); err != nil {
		return fmt.Errorf("uring: register %d buffers: %w (RLIMIT_MEMLOCK may be too low)", len(bufs), err)
	}
	return nil
}

// UnregisterBuffers drops the registered buffer table.
func (r *Ring) UnregisterBuffers() error {
	if err := r.register(unregisterBuffers, nil, 0); err != nil {
		return fmt.Errorf("uring: unregister buffers: %w", err)
	}
	return nil
}

// AlignedBuffer allocates size bytes aligned to align (a power of two) with
// mmap, outside the Go heap: suitable for O_DIRECT and for registration, and
// never moved or collected. Free it with FreeBuffer.
func AlignedBuffer(size int) ([]byte, error) {
	if size <= 0 {
		return nil, fmt.Errorf("uring: aligned buffer of %d bytes", size)
	}
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("uring: allocate %d-byte buffer: %w", size, err)
	}
	return b, nil
}

// FreeBuffer releases a buffer from AlignedBuffer.
func FreeBuffer(b []byte) error { return unix.Munmap(b) }

// CheckDirect reports whether buf, off and the length are aligned to align
// (the logical block size) as O_DIRECT requires, with an error that says
// which one is not.
func CheckDirect(buf []byte, off uint64, align int) error {
	a := uint64(align)
	if len(buf) > 0 {
		if p := uint64(uintptr(unsafe.Pointer(&buf[0]))); p%a != 0 {
			return fmt.Errorf("O_DIRECT buffer address %#x is not aligned to %d bytes", p, align)
		}
	}
	if uint64(len(buf))%a != 0 {
		return fmt.Errorf("O_DIRECT length %d is not a multiple of %d bytes", len(buf), align)
	}
	if off%a != 0 {
		return fmt.Errorf("O_DIRECT offset %d is not a multiple of %d bytes", off, align)
	}
	return nil
}
