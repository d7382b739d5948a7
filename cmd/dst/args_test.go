package main

import (
	"strings"
	"testing"
)

func TestInterspersed(t *testing.T) {
	app := newApp()
	for _, tc := range []struct{ in, want string }{
		{"dst recover 5 --wait 30s", "dst recover --wait 30s 5"},
		{"dst --log-level debug attach dst://h/x --ro -q 2", "dst --log-level debug attach --ro -q 2 dst://h/x"},
		{"dst attach --timeout 1s dst://h/x --retries=3", "dst attach --timeout 1s --retries=3 dst://h/x"},
		{"dst add file --path /x --ro", "dst add file --path /x --ro"},
		{"dst add null --size 1GiB -q 2", "dst add null --size 1GiB -q 2"},
		{"dst stats 0 --count=2", "dst stats --count=2 0"},
		{"dst del 3 --all", "dst del --all 3"},
		{"dst recover 5 --bogus", "dst recover --bogus 5"},     // cli then names it
		{"dst attach -- -odd --ro", "dst attach -- -odd --ro"}, // after --: arguments
		{"dst nosuchcommand 1 --x", "dst nosuchcommand 1 --x"}, // cli reports it
		{"dst --log-format json list --json", "dst --log-format json list --json"},
	} {
		got := strings.Join(interspersed(app, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
}

// A flag after the device id reaches the command: recover then fails on
// the missing device (or kernel), not on its command line.
func TestFlagAfterID(t *testing.T) {
	err := run("recover", "5", "--wait", "1s")
	if err == nil {
		t.Fatal("recover of a device that does not exist succeeded")
	}
	for _, bad := range []string{"exactly one device id", "not a device id"} {
		if strings.Contains(err.Error(), bad) {
			t.Fatalf("the flag after the id was taken as an argument: %v", err)
		}
	}
	// The flag after the id is seen as a flag: del refuses the mix.
	if err := run("del", "7", "--all"); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("dst del 7 --all: %v, want the ids-or---all refusal", err)
	}
}
