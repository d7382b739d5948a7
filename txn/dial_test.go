package txn

import (
	"testing"
	"time"
)

// The handshake has no checksum: a corrupted HELLO or WELCOME is noticed
// only by the handshake timeout, so by default that timeout must not
// outlast a request's own timeout (or one stalled dial would use up a
// request's retries), within [1s, 10s].
func TestHandshakeTimeoutDefault(t *testing.T) {
	for _, tc := range []struct {
		timeout, handshake, want time.Duration
	}{
		{0, 0, 10 * time.Second}, // Timeout defaults to 10s
		{2 * time.Second, 0, 2 * time.Second},
		{100 * time.Millisecond, 0, time.Second},
		{time.Minute, 0, 10 * time.Second},
		{time.Second, 30 * time.Second, 30 * time.Second}, // explicit wins
	} {
		o := Options{Timeout: tc.timeout, HandshakeTimeout: tc.handshake}
		o.defaults()
		if o.HandshakeTimeout != tc.want {
			t.Errorf("Timeout %v, HandshakeTimeout %v: got %v, want %v", tc.timeout, tc.handshake, o.HandshakeTimeout, tc.want)
		}
	}
}
