package main

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dstProc is a dst command running in its own process: the test binary
// run again with DST_TEST_MAIN=1 (see TestMain), so signals reach a real
// main.
type dstProc struct {
	cmd    *exec.Cmd
	out    *bufio.Reader    // its stdout
	stderr *strings.Builder // its log; read it once it has exited (or to report a failure)
	exited chan error       // its exit, put back by whoever takes it
}

// startDst starts `dst args...`; the process is killed at cleanup if it
// is still running.
func startDst(t *testing.T, args ...string) *dstProc {
	t.Helper()
	p := &dstProc{cmd: exec.Command(os.Args[0], args...), stderr: new(strings.Builder), exited: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(), "DST_TEST_MAIN=1")
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.out = bufio.NewReader(stdout)
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// line reads the next line of its stdout, without the newline.
func (p *dstProc) line(t *testing.T) string {
	t.Helper()
	l, err := p.out.ReadString('\n')
	if err != nil {
		t.Fatalf("dst %s: reading stdout: %v; stderr:\n%s", strings.Join(p.cmd.Args[1:], " "), err, p.stderr.String())
	}
	return strings.TrimSpace(l)
}

// stop sends SIGTERM and fails the test unless the process exits cleanly
// within d.
func (p *dstProc) stop(t *testing.T, d time.Duration) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Fatalf("dst %s after SIGTERM: %v; stderr:\n%s", p.cmd.Args[1], err, p.stderr.String())
		}
	case <-time.After(d):
		t.Fatalf("dst %s did not stop on SIGTERM", p.cmd.Args[1])
	}
}
