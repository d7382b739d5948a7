package crypto

import "flag"

func init() {
	flag.IntVar(&benchMaxWorkers, "workers", 0, "BenchmarkPool: most pool workers (0: GOMAXPROCS)")
}
