# vmpod build. `make` builds every binary into bin/.
GO ?= go
PREFIX ?= /usr/local
BIN := $(CURDIR)/bin
TOOLS := $(CURDIR)/.tools

# Code generators, pinned so that `make proto` is reproducible.
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_TTRPC_VERSION := v1.2.10

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/vmpod/vmpod/version.Version=$(VERSION)

# The agent is the guest's /init: static, cgo for libcontainer's nsenter.
AGENT_TAGS := netgo,osusergo
AGENT_LDFLAGS := $(LDFLAGS) -extldflags -static

TEST_TIMEOUT ?= 25m

.PHONY: all deps build agent proto proto-check test unit-test fuzz vet fmt-check clean
all: build

build: agent
	@for d in cmd/*/; do n=$$(basename $$d); [ "$$n" = vmpod-agent ] && continue; \
		echo "go build ./cmd/$$n"; \
		CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/$$n ./cmd/$$n || exit 1; done

agent:
	CGO_ENABLED=1 $(GO) build -tags $(AGENT_TAGS) -ldflags '$(AGENT_LDFLAGS)' -o $(BIN)/vmpod-agent ./cmd/vmpod-agent

# The guest image: out/vmpod-initrd.img (agent as /init) and out/vmpod-kernel.
# DEBUG=1 adds a busybox shell.
image: agent
	$(GO) run ./cmd/vmpod-image --agent $(BIN)/vmpod-agent --out $(CURDIR)/out $(if $(DEBUG),--debug)

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

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# Debian packages and tools for building and testing (root, idempotent).
deps:
	scripts/install-deps.sh

# The README's test command: everything CI checks, on a fresh Debian machine.
test: deps build proto-check vet fmt-check unit-test fuzz

unit-test:
	$(GO) test -timeout $(TEST_TIMEOUT) ./...

# Every fuzz target runs for FUZZTIME on top of its seed corpus.
FUZZTIME ?= 10s
fuzz:
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

clean:
	rm -rf $(BIN) $(TOOLS)
