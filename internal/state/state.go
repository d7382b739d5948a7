// Package state keeps one small record per device that a dst daemon
// serves, under /run/dst: what `dst list` shows beyond the kernel's view
// (the target, the URL, the owning process) and what `dst recover` needs to
// take a device over. Records are written atomically (temp file, fsync,
// rename), so a reader never sees half a record.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// DefaultDir is where records live.
const DefaultDir = "/run/dst"

// Record describes one device served by a dst process.
type Record struct {
	ID      uint32    `json:"id"`
	PID     int       `json:"pid"`
	Kind    string    `json:"kind"`              // "null", "file", "remote"
	Target  string    `json:"target"`            // human description
	Path    string    `json:"path,omitempty"`    // backing file for file targets
	URL     string    `json:"url,omitempty"`     // exporter URL for remote devices
	Queues  int       `json:"queues"`            // hardware queues
	Depth   int       `json:"depth"`             // queue depth
	Size    uint64    `json:"size"`              // bytes
	Options []string  `json:"options,omitempty"` // command-line options needed to serve it again
	Started time.Time `json:"started"`
	// Conn is the remote connection state ("up", "connecting"...), updated
	// by remote devices when it changes.
	Conn string `json:"conn,omitempty"`

	// What `dst recover ID` needs to serve the device again without
	// arguments. The kernel keeps the queues, depth and parameters; these
	// rebuild the target and the daemon's behaviour.
	BlockSize   uint32 `json:"block_size,omitempty"` // logical block size (null targets)
	MaxIO       uint32 `json:"max_io,omitempty"`     // bytes per request granted by the kernel
	UserCopy    bool   `json:"user_copy,omitempty"`
	ReadOnly    bool   `json:"read_only,omitempty"`
	Buffered    bool   `json:"buffered,omitempty"` // file targets: page cache instead of O_DIRECT
	Recoverable bool   `json:"recoverable,omitempty"`
	// KeepDevice: on SIGTERM the daemon leaves the device quiesced for the
	// next `dst recover` instead of removing it.
	KeepDevice bool    `json:"keep_device,omitempty"`
	Remote     *Remote `json:"remote,omitempty"`
	// Epoch counts the daemons that have served the device: `dst recover`
	// increments it (and writes the record) before it sends anything, and
	// numbers its transactions from txn.EpochFirstID(Epoch).
	Epoch uint16 `json:"epoch,omitempty"`
	// Recoveries counts successful `dst recover`s.
	Recoveries int `json:"recoveries,omitempty"`
	// MetricsListen is the daemon's --metrics-listen address (dst recover
	// serves metrics there too). Every device daemon also serves them on
	// the Unix socket ublkN.metrics next to the record (dst stats).
	MetricsListen string `json:"metrics_listen,omitempty"`
}

// Remote holds a remote device's connection settings and its sessions.
type Remote struct {
	Timeout string `json:"timeout"` // Go durations
	Retries int    `json:"retries"`
	Ping    string `json:"ping"`
	// Sessions[i] is queue i's session token, hex: a bearer credential
	// (whoever has it can resume the session), hence records are 0600.
	Sessions []string `json:"sessions,omitempty"`
	// Frame protection (dst attach --checksum, --cipher, --key-file as an
	// absolute path; the key itself is not recorded).
	Checksum string `json:"checksum,omitempty"`
	Cipher   string `json:"cipher,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
	// CryptoWorkers is dst attach --crypto-workers (dst recover uses it
	// unless given its own).
	CryptoWorkers int `json:"crypto_workers,omitempty"`
}

// Dir is a directory of records.
type Dir string

func (d Dir) path(id uint32) string { return filepath.Join(string(d), fmt.Sprintf("ublk%d.json", id)) }

// Write stores r atomically.
func (d Dir) Write(r *Record) error {
	if err := os.MkdirAll(string(d), 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	// CreateTemp makes the file 0600 (the record may hold session
	// tokens); Chmod says so whatever the umask.
	f, err := os.CreateTemp(string(d), ".ublk*.tmp")
	if err != nil {
		return fmt.Errorf("state record: %w", err)
	}
	tmp := f.Name()
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(append(b, '\n'))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, d.path(r.ID))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("state record for device %d: %w", r.ID, err)
	}
	return nil
}

// Read loads the record of device id; os.ErrNotExist if there is none.
func (d Dir) Read(id uint32) (*Record, error) {
	b, err := os.ReadFile(d.path(id))
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("state record %s: %w", d.path(id), err)
	}
	if r.ID != id {
		return nil, fmt.Errorf("state record %s names device %d", d.path(id), r.ID)
	}
	return &r, nil
}

// Remove deletes the record of device id (no error if it is gone).
func (d Dir) Remove(id uint32) error {
	if err := os.Remove(d.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// List returns every readable record, by id.
func (d Dir) List() ([]*Record, error) {
	ents, err := os.ReadDir(string(d))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Record
	for _, e := range ents {
		var id uint32
		name := e.Name()
		if !strings.HasPrefix(name, "ublk") || !strings.HasSuffix(name, ".json") {
			continue
		}
		if _, err := fmt.Sscanf(name, "ublk%d.json", &id); err != nil {
			continue
		}
		if r, err := d.Read(id); err == nil {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Alive reports whether process pid exists and has not exited: a zombie
// (killed, not yet reaped by its parent) is dead.
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return true
	}
	switch b[i+2] {
	case 'Z', 'X', 'x':
		return false
	}
	return true
}

// ErrLocked: another process holds a device's lock.
var ErrLocked = errors.New("locked by another process")

// Lock takes the lock of device id, without waiting: the daemon serving a
// device holds it for as long as it serves (the kernel drops it when the
// process dies, however it dies), and `dst recover` takes it before it
// touches the device, so two daemons never fight over one device. It
// returns ErrLocked when another process holds it.
func (d Dir) Lock(id uint32) (unlock func(), err error) {
	if err := os.MkdirAll(string(d), 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	path := filepath.Join(string(d), fmt.Sprintf("ublk%d.lock", id))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock device %d: %w", id, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("lock device %d: %w", id, err)
	}
	return func() { f.Close() }, nil
}
