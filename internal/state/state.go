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
	f, err := os.CreateTemp(string(d), ".ublk*.tmp")
	if err != nil {
		return fmt.Errorf("state record: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
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

// Alive reports whether process pid exists.
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}
