#!/usr/bin/env bash
# Builds the Kubernetes components a rootless node runs, from the Go module proxy (never a
# downloaded binary), at pinned versions:
#
#   deploy/kubernetes/build.sh [--prefix DIR]     (prints the bin dir on its last line)
#
#   kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl
#             k8s.io/kubernetes $K8S_VERSION through a throwaway module whose `replace`s pin
#             every staging module (k8s.io/api, client-go, ...) to the matching v0.N.P, the list
#             read from k8s.io/kubernetes's own go.mod;
#   etcd      go.etcd.io/etcd/server/v3/etcdmain at the etcd client version k8s.io/kubernetes
#             itself requires, called from a three-line main in the same module;
#   coredns   github.com/coredns/coredns at the version kubeadm of that release deploys (its
#             CoreDNSVersion constant; $COREDNS_VERSION overrides), in a module of its own (its
#             requirements differ from k8s's), with the plugins a cluster DNS uses; the cloud
#             back-ends (route53, azure, clouddns, ...) are left out, which saves most of its
#             compile time.
#
# Installs into $PREFIX/$K8S_VERSION/bin (default PREFIX /opt/rootless-cri-k8s-bin), readable by
# every user. A BUILD-INFO stamp records what went in; when it matches, the script is a no-op.
# Module and build caches persist in $K8S_BUILD_CACHE (default /var/cache/rootless-cri-k8s).
# Needs Go >= 1.26 (/usr/local/go/bin is added to PATH) and the module proxy.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.5}    # newest v1.36 patch the module proxy served (2026-12)
COREDNS_VERSION=${COREDNS_VERSION:-}    # empty: what kubeadm $K8S_VERSION deploys
# Bump when this script's recipe changes, so installed binaries are rebuilt.
RECIPE=3
PREFIX=/opt/rootless-cri-k8s-bin
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "k8s build: unknown argument $1" >&2; exit 2 ;;
  esac
done

case ":$PATH:" in *:/usr/local/go/bin:*) ;; *) export PATH="$PATH:/usr/local/go/bin" ;; esac
command -v go >/dev/null || { echo "k8s build: go not found (needs Go >= 1.26)" >&2; exit 1; }
CACHE=${K8S_BUILD_CACHE:-/var/cache/rootless-cri-k8s}
export GOMODCACHE=$CACHE/gomod GOCACHE=$CACHE/gocache GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
export GOPATH=$CACHE/gopath
log() { echo "k8s build: $*" >&2; }
# go, without its thousand "go: downloading ..." lines on a cold build (errors still show).
go_quiet() { "$@" 2> >(grep -v '^go: \(downloading\|added\|upgraded\|finding\) ' >&2); }

dest=$PREFIX/$K8S_VERSION
bin=$dest/bin
COMPONENTS=(kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl)
go_version=$(go env GOVERSION)
stamp="recipe=$RECIPE kubernetes=$K8S_VERSION coredns=${COREDNS_VERSION:-kubeadm} go=$go_version"

installed() {
  [ "$(head -n1 "$dest/BUILD-INFO" 2>/dev/null)" = "$stamp" ] || return 1
  for b in "${COMPONENTS[@]}" etcd coredns; do [ -x "$bin/$b" ] || return 1; done
}
if installed; then
  log "up to date in $bin ($stamp)"
  echo "$bin"
  exit 0
fi

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
patch=${K8S_VERSION##*.}
staging_version="v0.$minor.$patch"
started=$(date +%s)
mkdir -p "$CACHE" "$PREFIX"
work=$CACHE/work
rm -rf "$work" && mkdir -p "$work/k8s/etcd" "$work/coredns"
out=$(mktemp -d "$PREFIX/.build-XXXXXX")
trap 'rm -rf "$out"' EXIT
mkdir -p "$out/bin"

# --- Kubernetes and etcd: one throwaway module ----------------------------------------------
kinfo=$(go_quiet go mod download -json "k8s.io/kubernetes@$K8S_VERSION") || true
kgomod=$(jq -r '.GoMod // empty' <<<"$kinfo")
[ -n "$kgomod" ] || {
  log "the module proxy did not serve k8s.io/kubernetes@$K8S_VERSION: $(jq -r '.Error // empty' <<<"$kinfo")"
  exit 1
}
# k8s.io/kubernetes requires each staging module at v0.0.0 and maps it to ./staging/src/...; a
# dependency's replaces do not apply to us, so pin each one to its published version.
mapfile -t staging < <(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$kgomod")
[ "${#staging[@]}" -gt 20 ] || { log "found only ${#staging[@]} staging modules in $kgomod"; exit 1; }
etcd_version=$(sed -n 's#^[[:space:]]*go\.etcd\.io/etcd/client/v3 \(v[0-9.]*\).*#\1#p' "$kgomod" | head -n1)
[ -n "$etcd_version" ] || { log "no go.etcd.io/etcd/client/v3 requirement in $kgomod"; exit 1; }
stamp_etcd="etcd=$etcd_version"

{
  echo "module rootless-cri.local/kubernetes-build"
  echo
  echo "go $(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kgomod")"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  for m in "${staging[@]}"; do echo "	$m => $m $staging_version"; done
  echo ")"
} >"$work/k8s/go.mod"
cat >"$work/k8s/etcd/main.go" <<'EOF'
// etcd built from its server module: etcdmain is what etcd's own main calls.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF

log "resolving k8s.io/kubernetes $K8S_VERSION (${#staging[@]} staging modules at $staging_version) and etcd $etcd_version"
(cd "$work/k8s" && go_quiet go get "k8s.io/kubernetes@$K8S_VERSION" "go.etcd.io/etcd/server/v3@$etcd_version" >/dev/null)
vpkg=k8s.io/component-base/version
cpkg=k8s.io/client-go/pkg/version
build_date=$(cd "$work/k8s" && go list -m -json k8s.io/kubernetes | jq -r .Time)
ldflags="-s -w"
for p in $vpkg $cpkg; do
  ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
done
pkgs=()
for b in "${COMPONENTS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
log "building ${COMPONENTS[*]}"
(cd "$work/k8s" && go_quiet go build -trimpath -ldflags "$ldflags" -o "$out/bin/" "${pkgs[@]}")
log "building etcd $etcd_version"
(cd "$work/k8s" && go_quiet go build -trimpath -ldflags "-s -w" -o "$out/bin/etcd" ./etcd)

# --- CoreDNS: a module of its own -----------------------------------------------------------
if [ -z "$COREDNS_VERSION" ]; then
  kdir=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | jq -r .Dir)
  COREDNS_VERSION=$(sed -n 's/^[[:space:]]*CoreDNSVersion = "\(v[0-9.]*\)".*/\1/p' "$kdir/cmd/kubeadm/app/constants/constants.go")
  [ -n "$COREDNS_VERSION" ] || { log "no CoreDNSVersion in k8s.io/kubernetes $K8S_VERSION's kubeadm constants"; exit 1; }
fi
# The plugins of a cluster DNS (kubeadm's Corefile and a few operators commonly add), in any
# order: CoreDNS orders them by its own directive list.
COREDNS_PLUGINS=(errors log health ready kubernetes metrics forward cache loop reload loadbalance
  hosts rewrite template whoami)
cat >"$work/coredns/go.mod" <<EOF
module rootless-cri.local/coredns-build

go 1.26.0
EOF
{
  echo "// CoreDNS with the plugins a cluster DNS uses (see deploy/kubernetes/build.sh)."
  echo "package main"
  echo
  echo "import ("
  echo "	\"github.com/coredns/coredns/coremain\""
  echo "	_ \"github.com/coredns/coredns/core/dnsserver\""
  for p in "${COREDNS_PLUGINS[@]}"; do echo "	_ \"github.com/coredns/coredns/plugin/$p\""; done
  echo ")"
  echo
  echo "func main() { coremain.Run() }"
} >"$work/coredns/main.go"
log "building coredns $COREDNS_VERSION (plugins: ${COREDNS_PLUGINS[*]})"
(cd "$work/coredns" && go_quiet go get "github.com/coredns/coredns@$COREDNS_VERSION" >/dev/null &&
  go_quiet go build -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
    -o "$out/bin/coredns" .)

for b in "${COMPONENTS[@]}" etcd coredns; do [ -x "$out/bin/$b" ] || { log "$b was not built"; exit 1; }; done
"$out/bin/kubelet" --version | grep -qx "Kubernetes $K8S_VERSION" || { log "kubelet does not report $K8S_VERSION"; exit 1; }
{
  echo "$stamp"
  echo "$stamp_etcd coredns=$COREDNS_VERSION"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(($(date +%s) - started))s by deploy/kubernetes/build.sh"
  (cd "$work/k8s" && go list -m k8s.io/kubernetes k8s.io/client-go go.etcd.io/etcd/server/v3)
  (cd "$work/coredns" && go list -m github.com/coredns/coredns k8s.io/client-go)
} >"$out/BUILD-INFO"
chmod -R a+rX "$out"
chmod 0755 "$out"
rm -rf "$dest.old"
[ -e "$dest" ] && mv "$dest" "$dest.old"
mv "$out" "$dest"
rm -rf "$dest.old" "$work"
trap - EXIT
log "installed in $bin in $(($(date +%s) - started))s"
echo "$bin"
