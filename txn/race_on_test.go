//go:build race

package txn

// raceEnabled: the race detector makes sync.Pool drop items, so the
// steady-state allocation test does not hold under -race.
const raceEnabled = true
