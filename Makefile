# Saddlebag build, test and benchmark entry points.
#
#   make test    install what the tests need, then run every test (CI runs this)
#   make bench   print the side-by-side performance ratios
#   make fuzz    run every fuzz target for FUZZTIME each
#   make build   build bin/saddlebag

export GOTOOLCHAIN := local
GO ?= go
FUZZTIME ?= 30s
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.DEFAULT_GOAL := build
.PHONY: build test unit deps bench fuzz vet

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/saddlebag ./cmd/saddlebag

deps:
	@bash scripts/install-deps.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

test: deps vet consul
	$(GO) test -race -count=1 -timeout 20m ./...

bench: build
	bin/saddlebag bench

# Every Fuzz target in the module, each for FUZZTIME.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

-include e2e/tools.mk
