#!/usr/bin/env bash
# Build rootless-cri and install what it needs; shared by `make demo` and `make test`.
#
#   deploy/install.sh [--user NAME] [--app-dir DIR]
#
# As root: prepares the host (deploy/setup-host.sh, with --user NAME), installs the pinned
# Node.js (deploy/install-node.sh) and crictl and critest (cri-tools, pinned) with `go install`,
# builds the project, and copies the built app to DIR (world-readable; default
# /opt/rootless-cri) so an unprivileged user can run it even when this checkout is somewhere they
# cannot read. As another user: only builds (on the pinned Node.js, which root installed).
# Whatever `node` is on PATH, npm, the build and the installed app use the pinned one.
set -euo pipefail
cd "$(dirname "$0")/.."
CRI_TOOLS_VERSION=v1.36.0
user=""
app=/opt/rootless-cri
while [ $# -gt 0 ]; do
  case "$1" in
    --user) user="$2"; shift 2 ;;
    --app-dir) app="$2"; shift 2 ;;
    *) echo "install: unknown argument $1" >&2; exit 2 ;;
  esac
done

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
  if ! critest --version 2>/dev/null | grep -q "${CRI_TOOLS_VERSION#v}"; then
    echo "install: building critest $CRI_TOOLS_VERSION (a few minutes the first time)"
    src=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" | jq -r .Dir)
    (cd "$src" && GOFLAGS=-mod=mod go test -c -o /usr/local/bin/critest \
      -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION" ./cmd/critest)
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run build

if [ "$(id -u)" -eq 0 ]; then
  rm -rf "$app" && mkdir -p "$app/native"
  cp -a package.json proto dist deploy node_modules "$app"/
  # The app runs on the Node.js it was built with: <app>/node links to that versioned dir, and
  # <app>/bin/rootless-cri (deploy/launcher.sh) runs the CLI with it.
  ln -sfn "$(dirname "$node_bin")" "$app/node"
  mkdir -p "$app/bin" && cp deploy/launcher.sh "$app/bin/rootless-cri" && chmod 0755 "$app/bin/rootless-cri"
  [ -d native/build ] && cp -a native/build "$app/native/"
  # The test-image builder (used by make demo and the tests) compiles this source.
  mkdir -p "$app/test/fixtures" && cp test/fixtures/nonewprivs.c "$app/test/fixtures/"
  chmod -R a+rX "$app"
  ln -sf "$app/bin/rootless-cri" /usr/local/bin/rootless-cri
  echo "install: rootless-cri installed in $app (/usr/local/bin/rootless-cri)"
fi
