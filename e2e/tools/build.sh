#!/usr/bin/env bash
# Build a pinned HashiCorp tool (consul or nomad) from source and print its path.
#
#   e2e/tools/build.sh consul|nomad      build if needed, print the path
#   e2e/tools/build.sh -n consul|nomad   only print where the binary goes
#
# The version comes from the wrapper module e2e/tools/NAME/go.mod. The binary is
# cached outside the work tree at
#
#   ${SADDLEBAG_TOOLS_CACHE:-$HOME/.cache/saddlebag/tools}/NAME-VERSION/NAME
#
# and is only built when that file is missing, so a warm call returns at once.
# The build goes to a temporary file in the same directory and is renamed into
# place, so a reader never sees a half-written binary. Progress goes to stderr;
# stdout carries only the binary's path.
set -euo pipefail

# Everything is in main so that bash has read the whole script before running
# any of it: editing this file while a build is running cannot break that build.
main() {
	usage() { echo "usage: $0 [-n] consul|nomad" >&2; exit 2; }
	print_only=
	if [ "${1:-}" = -n ]; then
		print_only=1
		shift
	fi
	[ $# -eq 1 ] || usage
	name=$1

	case "$name" in
	consul)
		pkg=github.com/hashicorp/consul
		# Upstream release builds of Consul are static (CGO_ENABLED=0).
		cgo=0
		tags=
		;;
	nomad)
		pkg=github.com/hashicorp/nomad
		# Upstream linux builds of Nomad use cgo (GNUmakefile: CGO_ENABLED = 1)
		# and the hashicorpmetrics tag; the ui tag (embedded web UI) is left out.
		cgo=1
		tags=hashicorpmetrics
		;;
	*) usage ;;
	esac

	here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
	moddir=$here/$name
	[ -f "$moddir/go.mod" ] || { echo "build.sh: $moddir/go.mod not found" >&2; exit 1; }

	# The version pinned in the wrapper's go.mod: "require PKG vX" or, inside a
	# require block, "PKG vX".
	version=$(awk -v pkg="$pkg" '
		$1 == "require" && $2 == pkg { print $3; exit }
		$1 == pkg && $2 ~ /^v/       { print $2; exit }
	' "$moddir/go.mod")
	[ -n "$version" ] || { echo "build.sh: no $pkg requirement in $moddir/go.mod" >&2; exit 1; }

	cache=${SADDLEBAG_TOOLS_CACHE:-$HOME/.cache/saddlebag/tools}
	dir=$cache/$name-$version
	out=$dir/$name

	if [ -n "$print_only" ] || [ -x "$out" ]; then
		echo "$out"
		exit 0
	fi

	mkdir -p "$dir"

	# Serialise concurrent builds of the same tool (e.g. parallel make or tests):
	# the second caller waits and then finds the binary in place.
	if command -v flock >/dev/null 2>&1; then
		exec 9>"$dir/.lock"
		flock 9
		if [ -x "$out" ]; then
			echo "$out"
			exit 0
		fi
	fi

	if [ "$cgo" = 1 ] && ! command -v "$(GOTOOLCHAIN=local go env CC)" >/dev/null 2>&1; then
		echo "build.sh: no C compiler found; building $name with CGO_ENABLED=0" >&2
		cgo=0
	fi

	tmp=$(mktemp "$dir/.$name.XXXXXX")
	trap 'rm -f "$tmp"' EXIT

	echo "build.sh: building $name $version (cgo=$cgo) into $out; a cold build takes several minutes" >&2
	start=$(date +%s)
	(
		cd "$moddir"
		# GOTOOLCHAIN=local: use the installed Go, never download another one.
		# GOWORK=off: the wrapper is its own module, whatever go.work is around.
		# -mod=mod: a go.sum gap is filled from the module proxy instead of failing.
		GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=$cgo \
		GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" \
			go build -trimpath -ldflags "-s -w" ${tags:+-tags "$tags"} -o "$tmp" "$pkg"
	)

	# Sanity check before publishing: the binary runs and reports the pinned version.
	if ! "$tmp" version 2>/dev/null | grep -q "v${version#v}"; then
		echo "build.sh: $name binary does not report version $version:" >&2
		"$tmp" version >&2 || true
		exit 1
	fi

	chmod 0755 "$tmp"
	mv -f "$tmp" "$out"
	trap - EXIT
	echo "build.sh: built $name $version in $(( $(date +%s) - start ))s" >&2
	echo "$out"
}

main "$@"
