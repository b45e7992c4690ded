#!/usr/bin/env bash
# Runs kube-proxy (iptables mode) inside the rootless-cri node, as the unprivileged user, in the
# foreground, for a node joined to an API server (deploy/kubelet/kubelet.sh --kubeconfig ...):
#
#   deploy/kubelet/kube-proxy.sh --kubeconfig FILE [--cluster-cidr CIDR] [-- KUBE-PROXY FLAGS...]
#
# Services then work inside the node: ClusterIPs from pods and from the node, NodePorts on the
# node's IPs. A NodePort reaches the host only where it is published through rootlesskit's port
# API (see README, "Run a rootless Kubernetes node").
# Environment: KUBE_PROXY (binary; default: next to build.sh's kubelet, else on PATH),
# ROOTLESS_CRI (the rootless-cri command), ROOTLESS_CRI_CONFIG (its --config file).
set -euo pipefail
kubeconfig="" cluster_cidr=10.88.0.0/16   # the shipped CNI config's pod network
while [ $# -gt 0 ]; do
  case "$1" in
    --kubeconfig) kubeconfig="${2:?--kubeconfig needs a file}"; shift 2 ;;
    --cluster-cidr) cluster_cidr="${2:?--cluster-cidr needs a CIDR}"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "kube-proxy.sh: unknown argument $1 (kube-proxy's own flags go after --)" >&2; exit 2 ;;
  esac
done
[ -n "$kubeconfig" ] || { echo "kube-proxy.sh: --kubeconfig is required" >&2; exit 2; }
[ -r "$kubeconfig" ] || { echo "kube-proxy.sh: cannot read $kubeconfig" >&2; exit 1; }
case "$kubeconfig" in /*) ;; *) kubeconfig="$PWD/$kubeconfig" ;; esac
proxy=${KUBE_PROXY:-}
if [ -z "$proxy" ]; then
  proxy=$(ls -d /opt/rootless-cri-k8s-bin/v*/bin/kube-proxy 2>/dev/null | sort -V | tail -n1)
  [ -n "$proxy" ] || proxy=$(command -v kube-proxy) || { echo "kube-proxy.sh: no kube-proxy: run deploy/kubernetes/build.sh or set KUBE_PROXY" >&2; exit 1; }
fi
cli=(${ROOTLESS_CRI:-rootless-cri})
[ -z "${ROOTLESS_CRI_CONFIG:-}" ] || cli+=(--config "$ROOTLESS_CRI_CONFIG")
# --masquerade-all: pods share one bridge and replies between them are switched, not routed,
#   unless br_netfilter is loaded on the host (root only); SNAT of all Service traffic makes
#   replies come back through the node's iptables either way.
# --conntrack-*=0: leave the conntrack table size and TCP timeouts alone; they are the host's
#   (read-only in a user namespace) and kube-proxy exits trying to set them.
exec "${cli[@]}" enter -- "$proxy" --kubeconfig="$kubeconfig" --proxy-mode=iptables \
  --cluster-cidr="$cluster_cidr" --masquerade-all \
  --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
  "$@"
