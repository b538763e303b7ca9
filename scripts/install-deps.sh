#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo need, if missing.
# Idempotent: a machine that has everything runs no apt-get at all.
set -euo pipefail
# The filesystem tools live in sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

# tool -> package that provides it
declare -A need=(
  [nbdcopy]=libnbd-bin      # real NBD client (nbdcopy, nbdinfo)
  [nbdsh]=python3-libnbd    # scriptable NBD client used by the tests
  [mkfs.ext4]=e2fsprogs     # ext4 on FUSE+loop volumes (mkfs.ext4, e2fsck)
  [mkfs.xfs]=xfsprogs       # xfs on FUSE+loop volumes (mkfs.xfs, xfs_repair)
  [fusermount3]=fuse3       # FUSE userspace; the frontend mounts directly as root, fuse3 brings /etc/fuse.conf and the fusectl tooling
  [losetup]=mount           # loop devices
  [blkid]=util-linux        # filesystem detection
  [dockerd]=docker.io       # e2e: the docker form of the jobs (TestDockerForms), one dockerd per simulated node
  [nsenter]=util-linux      # e2e: runs each simulated node's processes in its network namespace
  [ip]=iproute2             # e2e: network namespaces, veth pairs, the bridge
  [iptables]=iptables       # e2e: partitions (rules inside a node's own namespace)
  [psql]=postgresql-client  # e2e: talks to the example Postgres job
  [curl]=curl               # e2e: scrapes each node's metrics from inside its namespace
  [/usr/lib/postgresql/15/bin/postgres]=postgresql  # e2e and demo: the example Postgres job runs Debian's server under exec
  [chromium]=chromium       # e2e: TestConsulUI opens the Consul UI in headless Chromium (chromedp)
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
