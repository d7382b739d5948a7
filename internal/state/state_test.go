package state

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
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

// TestRecordRoundTrip: everything `dst recover` needs survives a write and
// a read, and the file is private (it may hold session tokens).
func TestRecordRoundTrip(t *testing.T) {
	d := Dir(t.TempDir())
	in := &Record{
		ID: 4, PID: 1234, Kind: "remote", Target: "remote dst://h/e", URL: "dst://h:10811/e",
		Queues: 2, Depth: 64, Size: 1 << 30, Started: time.Unix(100, 0).UTC(), Conn: "up",
		BlockSize: 4096, MaxIO: 512 << 10, UserCopy: true, ReadOnly: true, Buffered: true,
		Recoverable: true, KeepDevice: true, Epoch: 3, Recoveries: 2,
		Remote: &Remote{Timeout: "2s", Retries: 0, Ping: "1s", Sessions: []string{"00112233445566778899aabbccddeeff", ""}},
	}
	if err := d.Write(in); err != nil {
		t.Fatal(err)
	}
	out, err := d.Read(4)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n in  %+v\n out %+v", in, out)
	}
	st, err := os.Stat(filepath.Join(string(d), "ublk4.json"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("record mode %v, want 0600", st.Mode().Perm())
	}
	b, _ := os.ReadFile(filepath.Join(string(d), "ublk4.json"))
	if !strings.Contains(string(b), `"retries": 0`) {
		t.Fatalf("retries 0 left out of the record:\n%s", b)
	}
}

func TestAliveZombie(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "exit 0")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	pid := cmd.Process.Pid
	// Not reaped yet: a zombie once it has exited.
	for i := 0; i < 200; i++ {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if strings.Contains(string(b), ") Z ") {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if Alive(pid) {
		t.Fatal("a zombie counts as alive")
	}
	cmd.Wait()
	if Alive(pid) {
		t.Fatal("a reaped process counts as alive")
	}
}

func TestLock(t *testing.T) {
	d := Dir(t.TempDir())
	unlock, err := d.Lock(2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Lock(2); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v, want ErrLocked", err)
	}
	other, err := d.Lock(3)
	if err != nil {
		t.Fatalf("another device's lock: %v", err)
	}
	other()
	unlock()
	again, err := d.Lock(2)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	again()
	if recs, _ := d.List(); len(recs) != 0 {
		t.Fatalf("lock files listed as records: %v", recs)
	}
}
