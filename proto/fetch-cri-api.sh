#!/usr/bin/env bash
# Puts the CRI v1 API file of the pinned k8s.io/cri-api version at proto/cri-api/api.proto
# (with the module's LICENSE beside it), for `npm run build`: the types in src/api/generated
# are generated from it and the daemon loads it at start.
#
# The pin is proto/cri-api.json: module, version, the file's path in the module and its sha256.
# Upgrading the CRI means changing "version" there; the build then stops and prints the new
# file's sha256 to put in "sha256", so the change of API is a reviewed two-line diff.
#
# The file is not kept in this repository: it is fetched with `go mod download`, which checks
# the module against the Go checksum database, and then checked against the pinned sha256.
# A copy already in place with the pinned hash is kept, so rebuilds need neither Go nor the
# network.
set -euo pipefail
cd "$(dirname "$0")"

fail() {
  echo "fetch-cri-api: $*" >&2
  exit 1
}

command -v jq >/dev/null 2>&1 || fail "jq is needed to read proto/cri-api.json (deploy/setup-host.sh installs it)"
module=$(jq -er .module cri-api.json) || fail "proto/cri-api.json has no \"module\""
version=$(jq -er .version cri-api.json) || fail "proto/cri-api.json has no \"version\""
file_in_module=$(jq -er .file cri-api.json) || fail "proto/cri-api.json has no \"file\""
pinned=$(jq -er .sha256 cri-api.json) || fail "proto/cri-api.json has no \"sha256\""
out=cri-api/api.proto
source_line="${module} ${version} ${file_in_module}"

if [ -f "$out" ] && [ "$(cat cri-api/SOURCE 2>/dev/null)" = "$source_line" ] &&
  [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$pinned" ]; then
  exit 0
fi

# Build machines keep the official Go tarball here, often off a build tool's PATH.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  PATH="/usr/local/go/bin:${PATH}"
fi
command -v go >/dev/null 2>&1 ||
  fail "the go command is not installed or not on PATH; Go downloads ${module}@${version} for the build"

# `go mod download` of a module that no go.mod requires must run outside any module.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
if ! info=$(cd "$scratch" && GOFLAGS=-mod=mod GO111MODULE=on go mod download -json "${module}@${version}" 2>"$scratch/stderr"); then
  fail "could not download ${module}@${version} (GOPROXY=$(go env GOPROXY)): $(cat "$scratch/stderr") ${info}"
fi
dir=$(printf '%s\n' "$info" | jq -er .Dir) || fail "go mod download printed no Dir for ${module}@${version}: ${info}"
[ -f "$dir/$file_in_module" ] || fail "${module}@${version} has no ${file_in_module} (looked in ${dir})"

actual=$(sha256sum "$dir/$file_in_module" | cut -d' ' -f1)
if [ "$actual" != "$pinned" ]; then
  fail "${file_in_module} of ${module}@${version} has sha256 ${actual}, proto/cri-api.json pins ${pinned}.
If you are moving to ${version} on purpose, review the API change and put that sha256 in proto/cri-api.json."
fi

# proto-loader brings google/protobuf/*.proto itself and looks for any other import beside the
# file. The pinned file imports nothing. Older cri-api (v0.25 for one) imported gogoproto for Go code
# generation only: proto-loader ignores those options but needs github.com/gogo/protobuf's
# gogoproto/gogo.proto at cri-api/github.com/gogo/protobuf/gogoproto/ to load the file. A
# version with an import must be given it here, or the build would pass and the daemon fail
# at start.
imports=$(sed -n 's/^[[:space:]]*import[[:space:]]\{1,\}\(public[[:space:]]\{1,\}\|weak[[:space:]]\{1,\}\)\{0,1\}"\([^"]*\)".*/\2/p' "$dir/$file_in_module" | grep -v '^google/protobuf/' || true)
if [ -n "$imports" ]; then
  fail "${module}@${version} ${file_in_module} imports $(echo "$imports" | tr '\n' ' ')which proto/fetch-cri-api.sh does not provide yet"
fi

mkdir -p cri-api
rm -f cri-api/SOURCE
tmp=$(mktemp cri-api/.api.proto.XXXXXX)
cp "$dir/$file_in_module" "$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
if [ -f "$dir/LICENSE" ]; then
  cp "$dir/LICENSE" cri-api/LICENSE.tmp && chmod 0644 cri-api/LICENSE.tmp && mv -f cri-api/LICENSE.tmp cri-api/LICENSE
fi
printf '%s\n' "$source_line" >cri-api/SOURCE
echo "fetch-cri-api: ${module}@${version} ${file_in_module} (sha256 ${actual}) -> proto/${out}" >&2
