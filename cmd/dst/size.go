package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var sizeUnits = []struct {
	suffix string
	mult   uint64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"kB", 1e3}, {"KB", 1e3},
	{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"k", 1 << 10},
	{"B", 1}, {"", 1},
}

// parseSize reads a byte count: plain bytes ("4096") or a number with a
// unit (KiB, MiB, GiB, TiB and K, M, G, T are powers of 1024; kB, MB, GB, TB
// powers of 1000). Fractions are allowed when the result is whole bytes.
func parseSize(s string) (uint64, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("empty size")
	}
	for _, u := range sizeUnits {
		if !strings.HasSuffix(in, u.suffix) {
			continue
		}
		num := strings.TrimSpace(strings.TrimSuffix(in, u.suffix))
		if num == "" {
			break
		}
		if n, err := strconv.ParseUint(num, 10, 64); err == nil {
			if n > math.MaxUint64/u.mult {
				return 0, fmt.Errorf("size %q is too large", s)
			}
			return n * u.mult, nil
		}
		f, err := strconv.ParseFloat(num, 64)
		if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
			break
		}
		v := f * float64(u.mult)
		if v >= math.MaxUint64 {
			return 0, fmt.Errorf("size %q is too large", s)
		}
		if v != math.Trunc(v) {
			return 0, fmt.Errorf("size %q is not a whole number of bytes", s)
		}
		return uint64(v), nil
	}
	return 0, fmt.Errorf("size %q not understood: use bytes (4096) or a unit: KiB, MiB, GiB, TiB (also K, M, G, T), or kB, MB, GB, TB", s)
}

// formatSize prints n with the largest binary unit that divides it.
func formatSize(n uint64) string {
	for _, u := range []struct {
		s string
		m uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.m && n%u.m == 0 {
			return fmt.Sprintf("%d%s", n/u.m, u.s)
		}
	}
	return fmt.Sprintf("%dB", n)
}
