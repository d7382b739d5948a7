// Baseline for BenchmarkNop/BenchmarkNopBatch32: the same loops written in C
// on liburing, so `make bench` can print Go/liburing ratios measured in one
// run on one machine. Built only by the Makefile's bench target, when
// liburing-dev is installed.
#include <liburing.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
	struct io_uring r;
	struct io_uring_params p = {0};
	struct io_uring_cqe *c;
	const int n = 2000000;
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
	if (io_uring_queue_init_params(64, &r, &p)) {
		perror("io_uring_queue_init_params");
		return 1;
	}
	double t0 = now();
	for (int i = 0; i < n; i++) {
		io_uring_prep_nop(io_uring_get_sqe(&r));
		io_uring_submit_and_wait(&r, 1);
		io_uring_peek_cqe(&r, &c);
		io_uring_cqe_seen(&r, c);
	}
	double t1 = now();
	printf("liburing NOP round trip (defer): %.1f ns/op\n", (t1 - t0) / n * 1e9);
	t0 = now();
	for (int i = 0; i < n; i += 32) {
		for (int j = 0; j < 32; j++)
			io_uring_prep_nop(io_uring_get_sqe(&r));
		io_uring_submit_and_wait(&r, 32);
		unsigned head, k = 0;
		io_uring_for_each_cqe(&r, head, c) k++;
		io_uring_cq_advance(&r, k);
	}
	t1 = now();
	printf("liburing NOP batch of 32 (defer): %.1f ns/op\n", (t1 - t0) / n * 1e9);
	return 0;
}
