package state

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWriteReadListRemove(t *testing.T) {
	d := Dir(filepath.Join(t.TempDir(), "run"))
	if recs, err := d.List(); err != nil || len(recs) != 0 {
		t.Fatalf("List on a missing dir: %v %v", recs, err)
	}
	for _, id := range []uint32{3, 1} {
		r := &Record{ID: id, PID: os.Getpid(), Kind: "null", Queues: 1, Depth: 64, Size: 1 << 30, Started: time.Unix(1, 0).UTC()}
		if err := d.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	r, err := d.Read(3)
	if err != nil || r.ID != 3 || r.Size != 1<<30 || r.Kind != "null" {
		t.Fatalf("Read: %+v %v", r, err)
	}
	recs, err := d.List()
	if err != nil || len(recs) != 2 || recs[0].ID != 1 || recs[1].ID != 3 {
		t.Fatalf("List: %+v %v", recs, err)
	}
	// No temp files are left behind.
	ents, _ := os.ReadDir(string(d))
	if len(ents) != 2 {
		t.Fatalf("dir holds %d entries, want 2", len(ents))
	}
	if err := d.Remove(3); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(3); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if _, err := d.Read(3); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Read after Remove: %v", err)
	}
}

func TestReadRejectsMismatch(t *testing.T) {
	d := Dir(t.TempDir())
	os.WriteFile(filepath.Join(string(d), "ublk5.json"), []byte(`{"id": 6}`), 0o644)
	if _, err := d.Read(5); err == nil {
		t.Fatal("a record naming another device was accepted")
	}
	os.WriteFile(filepath.Join(string(d), "ublk7.json"), []byte(`{"id":`), 0o644)
	if _, err := d.Read(7); err == nil {
		t.Fatal("a truncated record was accepted")
	}
}

func TestAlive(t *testing.T) {
	if !Alive(os.Getpid()) {
		t.Fatal("this process is not alive")
	}
	if Alive(0) || Alive(1<<30) {
		t.Fatal("impossible pids are alive")
	}
}
