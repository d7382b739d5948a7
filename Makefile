# DST — network block devices on ublk.
#
#   make demo    the main job: a demo device served by a local exporter
#                (inside a qemu guest when this host has no ublk)
#   make test    everything CI runs: lint, host tests with -race, a short
#                fuzz of every decoder, and the guest tests (installs what it
#                needs: apt packages, the guest kernel)
#
# Other targets: build, install, lint, hosttest, fuzz, fuzz-long, vmtest,
# bench, bench-vm, clean.

SHELL    := /bin/bash
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin/dst
FUZZTIME ?= 5s
FUZZ_PROPS ?=
.PHONY: all build install test lint hosttest fuzz fuzz-long vmtest bench bench-vm demo clean deps

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/dst

# install puts bin/dst, the systemd units and their helper, the example
# configuration and the operations guide under DESTDIR/PREFIX, and creates
# /etc/dst/attach (see docs/OPERATIONS.md). It is idempotent (the same
# files again) and never writes a configuration file. It enables and
# starts nothing; it runs systemctl daemon-reload only without DESTDIR, on
# a system running systemd.
PREFIX    ?= /usr/local
DESTDIR   ?=
BINDIR    ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/lib/dst
UNITDIR   ?= $(PREFIX)/lib/systemd/system
DOCDIR    ?= $(PREFIX)/share/doc/dst
SYSCONFDIR ?= /etc
UNIT_SED  := -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@LIBEXECDIR@|$(LIBEXECDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g'

install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR) \
		$(DESTDIR)$(SYSCONFDIR)/dst/attach
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/dst
	install -m 0755 dist/systemd/dst-attach-unit $(DESTDIR)$(LIBEXECDIR)/dst-attach-unit
	for u in dst-export.service dst-attach@.service; do \
		sed $(UNIT_SED) dist/systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u.tmp && chmod 0644 $(DESTDIR)$(UNITDIR)/$$u.tmp && \
		mv -f $(DESTDIR)$(UNITDIR)/$$u.tmp $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	install -m 0644 docs/dst-export.example.toml dist/systemd/attach.example.env docs/OPERATIONS.md $(DESTDIR)$(DOCDIR)/
	@# The example is not installed as the configuration: started unedited it
	@# would serve its example disks. dst-export fails until the file exists.
	@if [ ! -e $(DESTDIR)$(SYSCONFDIR)/dst/export.toml ]; then \
		echo "install: no $(SYSCONFDIR)/dst/export.toml yet: start from $(DOCDIR)/dst-export.example.toml"; fi
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

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
