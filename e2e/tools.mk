# Pinned HashiCorp Consul and Nomad binaries for the e2e tests, built from
# source by e2e/tools/build.sh and cached outside the work tree (see
# e2e/tools/README.md). Included by the top-level Makefile.
#
#   make tools    build both (instant when already cached)
#   make consul   build Consul only
#   make nomad    build Nomad only
#
# CONSUL_BIN and NOMAD_BIN are the cached paths; they are exported to recipes
# (and so to `go test` run from make) as SADDLEBAG_CONSUL_BIN and
# SADDLEBAG_NOMAD_BIN. Set SADDLEBAG_TOOLS_CACHE to move the cache.

# Don't let the targets below become the including Makefile's default goal.
saddlebag_tools_default_goal := $(.DEFAULT_GOAL)

TOOLS_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))/tools
TOOLS_BUILD := $(TOOLS_DIR)/build.sh

CONSUL_BIN ?= $(shell bash $(TOOLS_BUILD) -n consul)
NOMAD_BIN ?= $(shell bash $(TOOLS_BUILD) -n nomad)

export SADDLEBAG_CONSUL_BIN := $(CONSUL_BIN)
export SADDLEBAG_NOMAD_BIN := $(NOMAD_BIN)

.PHONY: tools consul nomad

tools: consul nomad

consul:
	@bash $(TOOLS_BUILD) consul

nomad:
	@bash $(TOOLS_BUILD) nomad

.DEFAULT_GOAL := $(saddlebag_tools_default_goal)
