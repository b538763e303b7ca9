#!/usr/bin/env bash
# The local demo cluster: `make dev` (up) and `make dev-down` (down).
#
#   scripts/dev.sh up       start it, or show the one already running
#   scripts/dev.sh status   show it
#   scripts/dev.sh failover kill the node under Postgres and time the failover
#   scripts/dev.sh upgrade  rebuild saddlebag from this tree and upgrade the
#                           running saddlebag-node job in place under load
#   scripts/dev.sh down     tear it down (every process, namespace, mount, rule)
#
# The cluster itself is e2e/cmd/devcluster, the same harness the
# end-to-end tests use (e2e/cluster); this script only builds it. `make
# dev` has already built the pinned Consul and Nomad and bin/saddlebag.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
# make exports these; keep the script usable on its own too.
export SADDLEBAG_CONSUL_BIN="${SADDLEBAG_CONSUL_BIN:-$(bash e2e/tools/build.sh consul)}"
export SADDLEBAG_NOMAD_BIN="${SADDLEBAG_NOMAD_BIN:-$(bash e2e/tools/build.sh nomad)}"

case "${1:-}" in
  up|status|failover|upgrade|down)
    go build -o bin/devcluster ./e2e/cmd/devcluster
    exec bin/devcluster "$1"
    ;;
  *)
    echo "usage: $0 up|status|failover|upgrade|down" >&2
    exit 2
    ;;
esac
