# Saddlebag build, test and benchmark entry points.
#
#   make test     install what the tests need, then run every test, the
#                 end-to-end ones last (CI runs this)
#   make e2e      only the end-to-end tests (real Consul + Nomad, 3 nodes)
#   make dev      build, start the local 3-node Consul + Nomad cluster, deploy
#                 Saddlebag, a replicated volume and Postgres on it
#   make dev-failover  kill the node under the demo's Postgres, time the failover
#   make dev-upgrade   rebuild Saddlebag and upgrade the demo's saddlebag-node job
#                 in place while Postgres commits (no commit may fail)
#   make dev-down tear it down
#   make bench    print the side-by-side performance ratios
#   make fuzz     run every fuzz target for FUZZTIME each
#   make torture  crash-and-fault schedules of the data plane for DURATION
#                 (or SEEDS schedules, or replay SEED; FAULTS=-powerloss,...)
#   make vet      go vet, gofmt, go.mod tidy, and the import rules of the
#                 packages' doc.go files (internal/layering)
#   make build    build bin/saddlebag

export GOTOOLCHAIN := local
GO ?= go
FUZZTIME ?= 30s
DURATION ?= 10m
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.DEFAULT_GOAL := build
.PHONY: build test unit deps bench fuzz torture vet e2e dev dev-down dev-failover dev-upgrade

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/saddlebag ./cmd/saddlebag

deps:
	@bash scripts/install-deps.sh

# vet also checks that go.mod is tidy and that every package keeps the
# import rules its doc.go states (internal/layering).
vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) mod tidy -diff
	$(GO) test -count=1 ./internal/layering

# The e2e package runs after the others, verbose, so that the figures it
# prints (nomad_node_down_seconds, ...) show in the output. Both need the
# pinned Consul and Nomad (a cold Nomad build takes ~6 min on 2 cores,
# then it is cached by version).
test: deps vet tools
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v '/e2e$$')
	@$(MAKE) --no-print-directory e2e

e2e: deps tools
	$(GO) test -race -count=1 -v -timeout 30m ./e2e

dev: deps tools build
	@bash scripts/dev.sh up

dev-down:
	@bash scripts/dev.sh down

dev-failover:
	@bash scripts/dev.sh failover

dev-upgrade:
	@bash scripts/dev.sh upgrade

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

# Crash-and-fault schedules (replication/sim, issue #10). SEED replays one
# (REPEAT times), SEEDS runs that many (from FIRST), else it runs for
# DURATION; FAULTS picks fault classes; STEPS the faults per schedule
# (default 14); PARALLEL schedules at once (default 8); PROCESSES=1 runs
# replicas as real processes. It fails on any lost write, divergence or
# fenced write; STRICT=1 also on a schedule that did not recover in time.
# SIMLOG=1 prints the data plane's logs, SIMLOG=failed those of failed
# schedules only.
torture:
	TORTURE_DURATION=$(DURATION) TORTURE_SEED=$(SEED) TORTURE_SEEDS=$(SEEDS) TORTURE_FIRST=$(FIRST) \
	TORTURE_FAULTS=$(FAULTS) TORTURE_REPEAT=$(REPEAT) TORTURE_PARALLEL=$(PARALLEL) TORTURE_STRICT=$(STRICT) \
	TORTURE_PROCESSES=$(PROCESSES) TORTURE_STEPS=$(STEPS) TORTURE_LOG=$(SIMLOG) \
	$(GO) test -count=1 -timeout 0 -v -run '^TestTorture$$' ./replication/sim

-include e2e/tools.mk
