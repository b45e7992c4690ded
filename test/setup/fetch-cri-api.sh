#!/usr/bin/env bash
# Prints the absolute path of the upstream CRI v1 api.proto (k8s.io/cri-api), downloading the
# module into the Go module cache first if needed. test/unit/proto-compat.test.ts compares our
# proto/api.proto against it. Idempotent: a second run only reads the cache.
#
# Usage: test/setup/fetch-cri-api.sh [version]   (default v0.36.3)
set -euo pipefail

version="${1:-v0.36.3}"
module="k8s.io/cri-api"
proto_in_module="pkg/apis/runtime/v1/api.proto"

fail() {
  echo "fetch-cri-api: $*" >&2
  exit 1
}

# Test runners often start with a minimal PATH; the official Go tarball lives here.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  PATH="/usr/local/go/bin:${PATH}"
fi
command -v go >/dev/null 2>&1 ||
  fail "the go command is not installed or not on PATH; install Go (it is used only to download ${module}@${version})"

# `go mod download` refuses to run inside a module whose go.mod lacks the dependency, and with
# no go.mod at all it needs -mod=mod; an empty scratch directory avoids both.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

if ! info="$(cd "$scratch" && GOFLAGS=-mod=mod GO111MODULE=on go mod download -json "${module}@${version}" 2>"$scratch/stderr")"; then
  fail "could not download ${module}@${version} (is the Go module proxy reachable? GOPROXY=$(go env GOPROXY)): $(cat "$scratch/stderr") ${info}"
fi

# The JSON has one "Dir": "..." line; Go module paths never contain quotes.
dir="$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Dir":[[:space:]]*"\(.*\)",\{0,1\}$/\1/p')"
[ -n "$dir" ] || fail "go mod download printed no Dir for ${module}@${version}: ${info}"

proto="${dir}/${proto_in_module}"
[ -f "$proto" ] || fail "${module}@${version} has no ${proto_in_module} (looked in ${dir})"

printf '%s\n' "$proto"
