# DST — network block devices on ublk.
#
#   make demo    the main job: a demo device served by a local exporter
#                (inside a qemu guest when this host has no ublk)
#   make test    everything CI runs: lint, host tests with -race, a short
#                fuzz of every decoder, and the guest tests (installs what it
#                needs: apt packages, the guest kernel)
#
# Other targets: build, lint, hosttest, fuzz, fuzz-long, vmtest, bench,
# bench-vm, clean.

SHELL    := /bin/bash
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin/dst
FUZZTIME ?= 5s
FUZZ_PROPS ?=
.PHONY: all build test lint hosttest fuzz fuzz-long vmtest bench bench-vm demo clean deps

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/dst

# deps installs what the host tests need beyond Go (idempotent, quick when
# everything is there); the guest's needs are installed by vmtest/setup.sh.
deps:
	@./scripts/deps.sh

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	@if command -v shellcheck >/dev/null; then vmtest/lint.sh; else echo "lint: shellcheck not installed, shell scripts not checked"; fi

hosttest: deps
	$(GO) test -race -count=1 -timeout 20m ./...

# fuzz runs every FuzzXxx of the module for FUZZTIME each.
fuzz:
	FUZZTIME=$(FUZZTIME) FUZZ_PROPS=$(FUZZ_PROPS) ./scripts/fuzz.sh

# fuzz-long: minutes per target and many more model cases and seeds.
fuzz-long:
	FUZZTIME=2m FUZZ_PROPS=20 ./scripts/fuzz.sh

vmtest: build
	vmtest/run.sh

test: lint hosttest fuzz vmtest

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./internal/... ./txn/... ./export/... ./transport/
	@if [ -f /usr/include/liburing.h ]; then \
		gcc -O2 -o bin/liburing_nop internal/uring/testdata/liburing_nop.c -luring && bin/liburing_nop; \
	else echo "bench: liburing-dev not installed; no C baseline for the NOP benchmarks (apt-get install liburing-dev)"; fi

bench-vm: build
	vmtest/run.sh --mode bench

demo: build
	@./scripts/demo.sh

clean:
	rm -rf bin vmtest/out
