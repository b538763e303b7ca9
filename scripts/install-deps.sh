#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo need, if missing.
# Idempotent: a machine that has everything runs no apt-get at all.
set -euo pipefail

# tool -> package that provides it
declare -A need=(
  [nbdcopy]=libnbd-bin      # real NBD client (nbdcopy, nbdinfo)
  [nbdsh]=python3-libnbd    # scriptable NBD client used by the tests
)

missing=()
for tool in "${!need[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${need[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
