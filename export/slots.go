package export

// slotTable numbers the disk operations a connection's ring has in
// flight: the number goes into the SQE's user data and finds the
// operation again at its completion. Freed numbers are reused, so the
// table grows to the connection's deepest queue and then allocates
// nothing.
type slotTable[T any] struct {
	slots []T
	free  []uint32
}

// put stores v and returns its number.
func (t *slotTable[T]) put(v T) uint32 {
	if k := len(t.free); k > 0 {
		i := t.free[k-1]
		t.free = t.free[:k-1]
		t.slots[i] = v
		return i
	}
	t.slots = append(t.slots, v)
	return uint32(len(t.slots) - 1)
}

// take returns the value numbered i and frees the number.
func (t *slotTable[T]) take(i uint32) T {
	v := t.slots[i]
	var zero T
	t.slots[i] = zero
	t.free = append(t.free, i)
	return v
}
