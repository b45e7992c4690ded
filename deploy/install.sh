#!/usr/bin/env bash
# Build rootless-cri and install what it needs; shared by `make demo` and `make test`.
#
#   deploy/install.sh [--user NAME] [--app-dir DIR] [--global-link]
#   deploy/install.sh --print-critest     the path of the pinned critest (installs nothing)
#
# As root: prepares the host (deploy/setup-host.sh, with --user NAME), installs the pinned
# Node.js (deploy/install-node.sh) and crictl and critest (cri-tools, pinned) with Go,
# builds the project, and copies the built app to DIR (world-readable) so an unprivileged user
# can run it even when this checkout is somewhere they cannot read. As another user: only
# builds (on the pinned Node.js, which root installed). Whatever `node` is on PATH, npm, the
# build and the installed app use the pinned one.
#
# Shared hosts: every user gets an app dir of their own (default /opt/rootless-cri/users/NAME;
# /opt/rootless-cri/shared without --user) and the command as ~NAME/.local/bin/rootless-cri, a
# link made as that user. Reinstalling one user's app never changes another's, and a running
# daemon keeps its files (the new copy is swapped in by rename). The host-wide
# /usr/local/bin/rootless-cri is written only with --global-link.
set -euo pipefail
cd "$(dirname "$0")/.."
CRI_TOOLS_VERSION=v1.37.0
# critest is the conformance suite a checkout is tested against, so it is kept by version
# (the tests run it by this path; nothing goes to /usr/local/bin): two checkouts pinning
# different versions on one machine never replace each other's suite under a running test.
CRITEST=/opt/rootless-cri-tools/$CRI_TOOLS_VERSION/critest
user=""
app=""
global_link=0
while [ $# -gt 0 ]; do
  case "$1" in
    --user) user="${2:?--user needs a name}"; shift 2 ;;
    --app-dir) app="${2:?--app-dir needs a directory}"; shift 2 ;;
    --global-link) global_link=1; shift ;;
    --print-critest) echo "$CRITEST"; exit 0 ;;
    *) echo "install: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$app" ]; then
  if [ -n "$user" ]; then app=/opt/rootless-cri/users/$user; else app=/opt/rootless-cri/shared; fi
fi
case "$app" in /*) ;; *) echo "install: --app-dir must be absolute, got $app" >&2; exit 2 ;; esac

if [ "$(id -u)" -eq 0 ]; then
  if [ -n "$user" ]; then bash deploy/setup-host.sh --user "$user"; else bash deploy/setup-host.sh; fi
fi
node_bin=$(bash deploy/install-node.sh)
export PATH="$node_bin:$PATH"
echo "install: Node.js $(node --version) from $(dirname "$node_bin")"

if [ "$(id -u)" -eq 0 ]; then
  export PATH="$PATH:/usr/local/go/bin"
  # crictl is a command; critest is a Go test binary (cri-tools builds it with `go test -c`).
  if ! crictl --version 2>/dev/null | grep -q "${CRI_TOOLS_VERSION#v}"; then
    echo "install: go install crictl $CRI_TOOLS_VERSION"
    GOFLAGS=-mod=mod GOBIN=/usr/local/bin go install \
      -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION" \
      "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
  fi
  if ! "$CRITEST" --version 2>/dev/null | grep -q "${CRI_TOOLS_VERSION#v}"; then
    echo "install: building critest $CRI_TOOLS_VERSION (a few minutes the first time)"
    src=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" | jq -r .Dir)
    mkdir -p "$(dirname "$CRITEST")"
    (cd "$src" && GOFLAGS=-mod=mod go test -c -o "$CRITEST.new" \
      -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION" ./cmd/critest)
    mv -f "$CRITEST.new" "$CRITEST"
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run build

if [ "$(id -u)" -eq 0 ]; then
  # Build the new copy beside the old one, then swap by rename: an install never leaves a
  # half-copied app, and processes running from the old one keep their (unlinked) files.
  mkdir -p "$(dirname "$app")"
  new=$(mktemp -d "$app.new.XXXXXX")
  trap 'rm -rf "$new"' EXIT
  mkdir -p "$new/native" "$new/bin" "$new/test/fixtures"
  cp -a package.json README.md proto dist deploy node_modules "$new"/
  # The app runs on the Node.js it was built with: <app>/node links to that versioned dir, and
  # <app>/bin/rootless-cri (deploy/launcher.sh) runs the CLI with it.
  ln -s "$(dirname "$node_bin")" "$new/node"
  cp deploy/launcher.sh "$new/bin/rootless-cri" && chmod 0755 "$new/bin/rootless-cri"
  [ -d native/build ] && cp -a native/build "$new/native/"
  # The test-image builder (used by make demo and the tests) compiles this source.
  cp test/fixtures/nonewprivs.c "$new/test/fixtures/"
  chmod -R go-w,a+rX "$new" && chmod 0755 "$new"
  if [ -e "$app" ]; then
    old=$(mktemp -d "$app.old.XXXXXX")
    mv -T "$app" "$old/app"
  fi
  mv -T "$new" "$app"
  trap - EXIT
  if [ -n "${old:-}" ]; then rm -rf "$old"; fi
  echo "install: rootless-cri installed in $app (run $app/bin/rootless-cri)"
  if [ -n "$user" ]; then
    # Made as the user, in the user's own home: root never writes through paths the user controls.
    home=$(getent passwd "$user" | cut -d: -f6)
    setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --init-groups --reset-env \
      env HOME="$home" sh -c 'mkdir -p "$HOME/.local/bin" && ln -sfn "$1" "$HOME/.local/bin/rootless-cri"' \
      sh "$app/bin/rootless-cri"
    echo "install: $user runs it as $home/.local/bin/rootless-cri (on PATH in deploy/run-as-user.sh)"
  fi
  # Earlier installs pointed the host-wide link at <app>/dist/src/cli.js, run by whatever node was
  # on PATH; such a link would keep running an old app on an old Node.js, so it goes.
  legacy=$(readlink /usr/local/bin/rootless-cri 2>/dev/null || true)
  case "$legacy" in
    */dist/src/cli.js) rm -f /usr/local/bin/rootless-cri
      echo "install: removed the old host-wide link /usr/local/bin/rootless-cri -> $legacy" ;;
  esac
  if [ "$global_link" = 1 ]; then
    ln -sfn "$app/bin/rootless-cri" /usr/local/bin/rootless-cri
    echo "install: /usr/local/bin/rootless-cri -> $app/bin/rootless-cri (--global-link)"
  fi
fi
