#!/usr/bin/env bash
# Runs kubelet inside the rootless-cri node (`rootless-cri enter`), as the unprivileged user, in
# the foreground (deploy/rootless-kubelet.service runs it under systemd --user):
#
#   deploy/kubelet/kubelet.sh [-- KUBELET FLAGS...]
#       standalone: runs the static pods in $KUBELET_MANIFESTS; kubelet's API on the node's
#       127.0.0.1:10250, anonymous (there is no API server to ask who may do what)
#   deploy/kubelet/kubelet.sh --kubeconfig FILE --client-ca FILE [--cluster-dns IP]
#                             [--cluster-domain DOMAIN] [--bootstrap-kubeconfig FILE]
#                             [-- KUBELET FLAGS...]
#       joined: registers the node (named after the node's hostname, config node.hostname)
#       with the API server in FILE; callers of kubelet's API must present a client cert
#       signed by --client-ca or a token the API server vouches for (webhook authn/authz).
#       With --bootstrap-kubeconfig (a bootstrap token), kubelet gets its client certificate
#       from the cluster (TLS bootstrapping) and writes FILE itself (deploy/cluster/cluster.sh)
#
# Configuration: deploy/kubelet/kubelet.yaml (what every rootless node needs), then a drop-in
# this script writes (socket, static pod dir, mode), then your own *.conf drop-ins.
# Environment (default):
#   KUBELET              kubelet binary (the newest /opt/rootless-cri-k8s-bin/*/bin/kubelet that
#                        deploy/kubernetes/build.sh installed, else `kubelet` on PATH)
#   ROOTLESS_CRI         the rootless-cri command (rootless-cri); ROOTLESS_CRI_CONFIG: its --config
#   ROOTLESS_CRI_SOCKET  the daemon's socket ($XDG_RUNTIME_DIR/rootless-cri/rootless-cri.sock)
#   KUBELET_ROOT_DIR     kubelet's state, pod volumes ($XDG_DATA_HOME/rootless-cri-kubelet)
#   KUBELET_MANIFESTS    static pod manifests ($XDG_CONFIG_HOME/rootless-cri/manifests)
#   KUBELET_DROPINS      your drop-ins, applied last ($XDG_CONFIG_HOME/rootless-cri/kubelet.conf.d)
#   KUBELET_RUN_DIR      where the generated drop-ins go ($XDG_RUNTIME_DIR/rootless-cri-kubelet)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kubeconfig="" client_ca="" cluster_dns="" cluster_domain=cluster.local bootstrap=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kubeconfig) kubeconfig="${2:?--kubeconfig needs a file}"; shift 2 ;;
    --client-ca) client_ca="${2:?--client-ca needs a file}"; shift 2 ;;
    --cluster-dns) cluster_dns="${2:?--cluster-dns needs an IP}"; shift 2 ;;
    --cluster-domain) cluster_domain="${2:?--cluster-domain needs a domain}"; shift 2 ;;
    --bootstrap-kubeconfig) bootstrap="${2:?--bootstrap-kubeconfig needs a file}"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "kubelet.sh: unknown argument $1 (kubelet's own flags go after --)" >&2; exit 2 ;;
  esac
done
die() { echo "kubelet.sh: $*" >&2; exit 1; }
[ -n "$kubeconfig" ] && [ -z "$client_ca" ] && die "--kubeconfig needs --client-ca (the CA of the API server's client certificate)"
[ -z "$kubeconfig" ] && { [ -n "$client_ca" ] || [ -n "$cluster_dns" ]; } && die "--client-ca and --cluster-dns only make sense with --kubeconfig"
[ -n "$bootstrap" ] && [ -z "$kubeconfig" ] && die "--bootstrap-kubeconfig needs --kubeconfig (where kubelet writes the one it bootstraps)"
# A bootstrapping kubelet writes its kubeconfig itself.
need=("$kubeconfig" "$client_ca" "$bootstrap")
if [ -n "$bootstrap" ] && [ ! -e "$kubeconfig" ]; then need=("$client_ca" "$bootstrap"); fi
for f in "${need[@]}"; do [ -z "$f" ] || [ -r "$f" ] || die "cannot read $f"; done

runtime_dir=${XDG_RUNTIME_DIR:-/tmp}
data_home=${XDG_DATA_HOME:-$HOME/.local/share}
config_home=${XDG_CONFIG_HOME:-$HOME/.config}
kubelet=${KUBELET:-}
if [ -z "$kubelet" ]; then
  kubelet=$(ls -d /opt/rootless-cri-k8s-bin/v*/bin/kubelet 2>/dev/null | sort -V | tail -n1)
  [ -n "$kubelet" ] || kubelet=$(command -v kubelet) || die "no kubelet: run deploy/kubernetes/build.sh (as root) or set KUBELET"
fi
socket=${ROOTLESS_CRI_SOCKET:-$runtime_dir/rootless-cri/rootless-cri.sock}
root_dir=${KUBELET_ROOT_DIR:-$data_home/rootless-cri-kubelet}
manifests=${KUBELET_MANIFESTS:-$config_home/rootless-cri/manifests}
dropins=${KUBELET_DROPINS:-$config_home/rootless-cri/kubelet.conf.d}
run_dir=${KUBELET_RUN_DIR:-$runtime_dir/rootless-cri-kubelet}
[ -S "$socket" ] || die "no rootless-cri socket at $socket: start the daemon (rootless-cri serve) or set ROOTLESS_CRI_SOCKET"
# Absolute paths: kubelet runs with the node's working directory.
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
[ -z "$kubeconfig" ] || kubeconfig=$(abs "$kubeconfig")
[ -z "$client_ca" ] || client_ca=$(abs "$client_ca")
[ -z "$bootstrap" ] || bootstrap=$(abs "$bootstrap")

mkdir -p "$manifests"   # (kubelet makes its root dir itself, which may be a path only the node has)
confd="$run_dir/conf.d"
rm -rf "$confd" && mkdir -p "$confd"
{
  echo "apiVersion: kubelet.config.k8s.io/v1beta1"
  echo "kind: KubeletConfiguration"
  echo "containerRuntimeEndpoint: \"unix://$socket\""
  echo "staticPodPath: \"$manifests\""
  # The default, /usr/libexec/kubernetes/..., is the host's and read-only in the node.
  echo "volumePluginDir: \"$root_dir/volume-plugins\""
  if [ -n "$kubeconfig" ]; then
    echo "address: 0.0.0.0"
    echo "authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: \"$client_ca\"}}"
    echo "authorization: {mode: Webhook}"
    echo "clusterDomain: \"$cluster_domain\""
    [ -z "$cluster_dns" ] || echo "clusterDNS: [\"$cluster_dns\"]"
  fi
} >"$confd/10-rootless-cri.conf"
if [ -d "$dropins" ]; then
  for f in "$dropins"/*.conf; do [ -e "$f" ] && cp "$f" "$confd/50-$(basename "$f")"; done
fi

cli=(${ROOTLESS_CRI:-rootless-cri})
[ -z "${ROOTLESS_CRI_CONFIG:-}" ] || cli+=(--config "$ROOTLESS_CRI_CONFIG")
exec "${cli[@]}" enter -- "$kubelet" --config="$here/kubelet.yaml" --config-dir="$confd" \
  --root-dir="$root_dir" ${kubeconfig:+--kubeconfig="$kubeconfig"} \
  ${bootstrap:+--bootstrap-kubeconfig="$bootstrap"} "$@"
