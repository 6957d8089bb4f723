# vmpod build. `make` builds every binary into bin/.
GO ?= go
# bash for pipefail: go test's status must survive the summariser's pipe.
SHELL := /bin/bash
PREFIX ?= /usr/local
BIN := $(CURDIR)/bin
TOOLS := $(CURDIR)/.tools

# Code generators, pinned so that `make proto` is reproducible.
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_TTRPC_VERSION := v1.2.10

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/vmpod/vmpod/version.Version=$(VERSION) -X github.com/vmpod/vmpod/config.ShareDir=$(PREFIX)/share/vmpod

# The agent is the guest's /init: static, cgo for libcontainer's nsenter;
# "seccomp" links libseccomp (libseccomp.a from libseccomp-dev, found with
# pkg-config) so that OCI seccomp profiles are applied in the guest.
# internal/testbin builds the tests' agent with the same tags (agentTags):
# keep the two in step.
AGENT_TAGS := netgo,osusergo,seccomp
# Stripped: a smaller initrd loads faster (13 MB to 9 MB).
AGENT_LDFLAGS := $(LDFLAGS) -s -w -extldflags -static

TEST_TIMEOUT ?= 45m

.PHONY: all demo deps build agent kernel proto proto-check test unit-test test-summary no-binaries integration-containerd2 fuzz bench-smoke vet fmt-check clean bench bench-overhead soak
all: build

build: agent
	@for d in cmd/*/; do n=$$(basename $$d); [ "$$n" = vmpod-agent ] && continue; \
		echo "go build ./cmd/$$n"; \
		CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/$$n ./cmd/$$n || exit 1; done

agent:
	CGO_ENABLED=1 $(GO) build -tags $(AGENT_TAGS) -ldflags '$(AGENT_LDFLAGS)' -o $(BIN)/vmpod-agent ./cmd/vmpod-agent

# vmpod's guest kernel (scripts/kernel.sh): Debian's linux-source-6.1 with
# the fragments of kernel/configs/fragments, everything built in, an
# uncompressed vmlinux with PVH entry. Built once (a few minutes on 2
# cores) into KERNEL_CACHE, outside the checkout, keyed by the source
# version and the fragments; later runs reuse it. Prints the vmlinux path.
KERNEL_CACHE ?= /var/cache/vmpod/kernel
kernel:
	@KERNEL_CACHE='$(KERNEL_CACHE)' GO='$(GO)' scripts/kernel.sh

# The guest kernel `make image` ships: vmpod (make kernel, no modules in
# the initrd) or stock (Debian's cloud kernel from /boot, with the modules
# it needs in the initrd).
KERNEL ?= vmpod
ifeq ($(filter vmpod stock,$(KERNEL)),)
$(error KERNEL=$(KERNEL): want vmpod or stock)
endif

# The guest image: out/vmpod-initrd.img (agent as /init), out/vmpod-kernel
# and its configuration out/vmpod-kernel.config (what vmpod check and the
# shim read). DEBUG=1 adds a busybox shell. With KERNEL=stock,
# ON_DEMAND=bridge,veth sets the modules loaded when the kernel asks
# (ON_DEMAND= for none; unset: vmpod-image's default); vmpod's kernel has
# them built in.
IMAGE_OUT ?= $(CURDIR)/out
image: agent
ifeq ($(KERNEL),vmpod)
	k=$$(KERNEL_CACHE='$(KERNEL_CACHE)' GO='$(GO)' scripts/kernel.sh) && \
		$(GO) run ./cmd/vmpod-image --agent $(BIN)/vmpod-agent --out $(IMAGE_OUT) --kernel "$$k" $(if $(DEBUG),--debug)
else
	$(GO) run ./cmd/vmpod-image --agent $(BIN)/vmpod-agent --out $(IMAGE_OUT) $(if $(DEBUG),--debug) $(if $(filter undefined,$(origin ON_DEMAND)),,--on-demand '$(ON_DEMAND)')
endif

$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(TOOLS)/protoc-gen-go-ttrpc:
	GOBIN=$(TOOLS) $(GO) install github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc@$(PROTOC_GEN_GO_TTRPC_VERSION)

proto: $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-ttrpc
	PATH=$(TOOLS):$$PATH protoc -I proto \
		--go_out=proto --go_opt=paths=source_relative \
		--go-ttrpc_out=proto --go-ttrpc_opt=paths=source_relative \
		proto/agent.proto

# CI: the committed generated code must match the .proto.
proto-check: proto
	git diff --exit-code -- proto/

# integration/goclient is a module of its own (containerd 1.7's Go client
# needs an older runtime-spec than runc): vet and test it too.
vet:
	$(GO) vet ./...
	cd integration/goclient && $(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# Runs a container in a VM with a private containerd (sets up everything).
demo:
	scripts/demo.sh

# Debian packages and tools for building and testing (root, idempotent).
deps:
	scripts/install-deps.sh

# The README's test command: everything CI checks, on a fresh Debian machine.
# It ends with the unit tests' summary (test-summary). CI (.ci/run) sets
# VMPOD_REQUIRE_ALL=1: a missing tool, image or privilege fails the test
# that needs it, and a skip not in .ci/allowed-skips fails the run.
test: deps build image proto-check vet fmt-check no-binaries unit-test integration-containerd2 fuzz bench-smoke test-summary

# A short `make bench`: shows it runs end to end and writes its report to
# out/ (docs/benchmarks.md is only written by a deliberate `make bench`);
# the figures are reported, never asserted.
bench-smoke:
	$(MAKE) bench RUNS=1 STDOUT_MIB=16 DENSITY=2 BENCH_REPORT=$(CURDIR)/out/benchmarks-smoke.md

# Every package's tests, as `go test -json` through the summariser: a line
# per package while it runs, the output of what failed, then every skip
# with its reason and "N passed, N failed, N skipped". The raw stream is
# kept in out/test.json. -count=1: a cached result is not a run (the tests
# build the shim and agent themselves, which go test cannot see change).
TEST_JSON := $(CURDIR)/out/test.json
# The tests boot the kernel `make image` shipped (VMPOD_TEST_KERNEL, see
# image/imagetest): vmpod's own unless KERNEL=stock, when they boot
# Debian's cloud kernel with its modules in their initrds.
TEST_KERNEL_ENV := $(if $(filter vmpod,$(KERNEL)),VMPOD_TEST_KERNEL=$(IMAGE_OUT)/vmpod-kernel)
ALLOWED_SKIPS := $(CURDIR)/.ci/allowed-skips
# (Built, not `go run`: go run adds "exit status 1" after the summary.)
TESTSUMMARY := $(TOOLS)/testsummary
unit-test:
	@mkdir -p $(dir $(TEST_JSON))
	$(GO) build -o $(TESTSUMMARY) ./internal/cmd/testsummary
	set -o pipefail; { $(TEST_KERNEL_ENV) $(GO) test -json -count=1 -timeout $(TEST_TIMEOUT) ./...; main=$$?; \
		(cd integration/goclient && $(TEST_KERNEL_ENV) $(GO) test -json -count=1 -timeout $(TEST_TIMEOUT) ./...); goclient=$$?; \
		exit $$((main | goclient)); } | \
		$(TESTSUMMARY) -json $(TEST_JSON) -allow $(ALLOWED_SKIPS)

# The summary of the last unit-test and integration-containerd2 runs
# together, alone: `make test` ends with it.
test-summary:
	@$(GO) build -o $(TESTSUMMARY) ./internal/cmd/testsummary
	@cat $(TEST_JSON) $(wildcard $(TEST2_JSON)) | $(TESTSUMMARY) -q -allow $(ALLOWED_SKIPS)

# CI: no tracked file is an executable binary (ELF); build outputs belong
# in the ignored bin/, out/ and .tools/.
no-binaries:
	@bad=$$(git ls-files -z | xargs -0 -r sh -c 'for f; do [ -f "$$f" ] && [ "$$(head -c 4 "$$f" | od -An -c | tr -d " \n")" = "177ELF" ] && echo "$$f"; done; true' sh); \
		if [ -n "$$bad" ]; then echo "tracked executable binaries (git rm them):"; echo "$$bad"; exit 1; fi

# The ctr, CRI and critest integration tests (and the harness's own) once
# more, on the pinned containerd 2.x that scripts/containerd2.sh builds
# from the Go module proxy and caches outside the checkout; unit-test ran
# them on the system's containerd (Debian's 1.6). Needs root.
CONTAINERD2_TESTS := ^(TestShim|TestCRI|TestCritest|TestRuncContainer)
TEST2_JSON := $(CURDIR)/out/test-containerd2.json
integration-containerd2:
	@mkdir -p $(dir $(TEST2_JSON))
	$(GO) build -o $(TESTSUMMARY) ./internal/cmd/testsummary
	bin=$$(scripts/containerd2.sh) && set -o pipefail && VMPOD_CONTAINERD_BIN=$$bin $(TEST_KERNEL_ENV) \
		$(GO) test -json -count=1 -timeout $(TEST_TIMEOUT) -run '$(CONTAINERD2_TESTS)' ./integration/ ./integration/harness/ | \
		$(TESTSUMMARY) -json $(TEST2_JSON) -allow $(ALLOWED_SKIPS)

# Every fuzz target runs for FUZZTIME on top of its seed corpus.
FUZZTIME ?= 10s
fuzz:
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

# The long soak: 20 rounds of 4 containers at once (80 VMs, about 15
# minutes under TCG on 2 cores); `make test` runs 6 rounds. Needs root.
soak:
	VMPOD_SOAK=full $(GO) test -count=1 -timeout 45m -run '^TestSoak$$' -v ./integration/

clean:
	rm -rf $(BIN) $(TOOLS)

# Measures vmpod against a bare QEMU boot and runc in the same run, prints a
# table and writes BENCH_REPORT, docs/benchmarks.md unless told otherwise
# (root, QEMU, containerd): commit it with the run's figures. RUNS runs
# per figure (BENCH_RUNS, else 5); STDOUT_MIB and DENSITY shrink the stdout
# and density figures for a quick run. A bad figure never fails it.
RUNS ?= $(or $(BENCH_RUNS),5)
STDOUT_MIB ?= 256
DENSITY ?= 16
BENCH_REPORT ?= $(CURDIR)/docs/benchmarks.md
bench: build image
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./bench -args \
		-runs $(RUNS) -stdout-mib $(STDOUT_MIB) -density $(DENSITY) \
		-shim $(BIN)/containerd-shim-kata-v2 -agent $(BIN)/vmpod-agent -kernel $(CURDIR)/out/vmpod-kernel -initrd $(CURDIR)/out/vmpod-initrd.img \
		-report $(BENCH_REPORT)

# The RuntimeClass overhead of deploy/runtimeclass.yaml (docs/kubernetes.md):
# only the idle-pod benchmark, on a VM of configuration.toml's default size;
# it prints, and writes to OVERHEAD_REPORT, the overhead.podFixed to declare.
# (`make bench` prints one too, for its own VM size.)
OVERHEAD_REPORT ?= $(CURDIR)/out/overhead.md
DEFAULT_MEMORY := $(shell sed -n 's/^default_memory = //p' configuration.toml)
DEFAULT_VCPUS := $(shell sed -n 's/^default_vcpus = //p' configuration.toml)
bench-overhead: build image
	$(GO) test -run '^$$' -bench RunningContainer -benchtime 1x -timeout 20m ./bench -args \
		-runs $(RUNS) -stdout-mib 1 -memory $(DEFAULT_MEMORY) -vcpus $(DEFAULT_VCPUS) \
		-shim $(BIN)/containerd-shim-kata-v2 -agent $(BIN)/vmpod-agent -kernel $(CURDIR)/out/vmpod-kernel -initrd $(CURDIR)/out/vmpod-initrd.img \
		-report $(OVERHEAD_REPORT)

# `make install` copies what `make build image` produced: the shim (and the
# vmpod tool, when built) into $(PREFIX)/bin; the guest kernel and initrd,
# the reference configuration and the containerd runtime snippets into
# $(PREFIX)/share/vmpod, where the shim looks for the guest image
# (config.ShareDir, set at link time from PREFIX): containerd.toml
# (config version 2, containerd 1.6 and 1.7) and containerd-v3.toml
# (version 3, containerd 2.x; a drop-in for /etc/containerd/conf.d).
DESTDIR ?=
SHAREDIR := $(PREFIX)/share/vmpod
INSTALL_BINS := containerd-shim-kata-v2 vmpod
INSTALL_SHARE := vmpod-kernel vmpod-kernel.config vmpod-initrd.img configuration.toml containerd.toml containerd-v3.toml

.PHONY: install uninstall
install:
	@for f in bin/containerd-shim-kata-v2 out/vmpod-kernel out/vmpod-initrd.img; do \
		[ -f "$$f" ] || { echo "install: $$f is missing: run make build image first" >&2; exit 1; }; done
	@for b in $(INSTALL_BINS); do if [ -f "bin/$$b" ]; then \
		echo install -D -m 0755 bin/$$b $(DESTDIR)$(PREFIX)/bin/$$b; \
		install -D -m 0755 bin/$$b $(DESTDIR)$(PREFIX)/bin/$$b || exit 1; fi; done
	install -D -m 0644 out/vmpod-kernel $(DESTDIR)$(SHAREDIR)/vmpod-kernel
	if [ -f out/vmpod-kernel.config ]; then install -D -m 0644 out/vmpod-kernel.config $(DESTDIR)$(SHAREDIR)/vmpod-kernel.config; \
		else rm -f $(DESTDIR)$(SHAREDIR)/vmpod-kernel.config; fi
	install -D -m 0644 out/vmpod-initrd.img $(DESTDIR)$(SHAREDIR)/vmpod-initrd.img
	install -D -m 0644 configuration.toml $(DESTDIR)$(SHAREDIR)/configuration.toml
	install -D -m 0644 config/containerd-runtime.toml $(DESTDIR)$(SHAREDIR)/containerd.toml
	install -D -m 0644 config/containerd-runtime-v3.toml $(DESTDIR)$(SHAREDIR)/containerd-v3.toml

uninstall:
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/bin/,$(INSTALL_BINS)) $(addprefix $(DESTDIR)$(SHAREDIR)/,$(INSTALL_SHARE))
	-rmdir $(DESTDIR)$(SHAREDIR) 2>/dev/null
