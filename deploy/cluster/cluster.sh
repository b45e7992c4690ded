#!/usr/bin/env bash
# A Kubernetes cluster of rootless nodes, each node an unprivileged user's rootless-cri (on one host
# or several). Run as the node's user, on the host, next to its running `rootless-cri serve`:
#
#   cluster.sh node-config [--name N] [--port-base P]   print the rootless-cri settings this node
#                                                       needs (merge them into its config.toml and
#                                                       restart rootless-cri serve)
#   cluster.sh init [--name N] [--port-base P] [--node-address IP] [--host-address IP] [--api-san IP]...
#                   [--coredns-image IMAGE]             the control plane (etcd, kube-apiserver,
#                                                       kube-controller-manager, kube-scheduler) in
#                                                       this node, CoreDNS, and this node joined
#   cluster.sh token                                    (control plane) a new bootstrap token, as
#                                                       the join command for a worker
#   cluster.sh join --server HOST:PORT --token T --ca-hash sha256:H
#                   [--name N] [--port-base P] [--node-address IP] [--host-address IP]
#                                                       join this node: the cluster CA checked
#                                                       against H, kubelet's certificate by TLS
#                                                       bootstrapping, the overlay, kube-proxy
#   cluster.sh kubeconfig                               (control plane) prints the admin kubeconfig
#                                                       for kubectl on the host
#   cluster.sh remove-node NAME                         (control plane) drain node NAME and delete
#                                                       its Node object
#   cluster.sh leave                                    (after remove-node) stop this node's
#                                                       components, remove its published ports
#                                                       and cluster files
#   cluster.sh down                                     stop this node's components (the control
#                                                       plane too) and unpublish its ports; its
#                                                       files stay, `init`/`join` start it again
#
# Options of every command: --dir DIR (this node's cluster files; default
# $XDG_DATA_HOME/rootless-cri-cluster, or $ROOTLESS_CRI_CLUSTER_DIR).
# Environment: ROOTLESS_CRI (the rootless-cri command), ROOTLESS_CRI_CONFIG (its --config file),
# ROOTLESS_CRI_K8S_BIN (kubelet & co.; default the newest deploy/kubernetes/build.sh installed).
#
# Port scheme (README, "Several nodes"): a node owns 32 host ports from its port base P, by default
# 20000 + 32 * (uid mod 384), so the users of one host never collide:
#   P+0 API server (control plane)  P+1 kubelet   P+2/udp VXLAN   P+3 streaming   P+4 metrics
#   P+16 .. P+31  NodePorts 30000 .. 30015 of this node
# Every published port is on the host's 127.0.0.1; a port already taken stops the command before
# anything starts, naming the port and what it is for. Nodes on hosts of their own publish on
# --host-address ADDR instead, where the other nodes reach them (the API server's certificate names
# it; --server of a join is then ADDR:P+0 of the control plane).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
deploy=$(dirname "$here")

CLUSTER_CIDR=10.88.0.0/16        # pods; each node gets a /24 (controller-manager)
NODE_CIDR_MASK=24
NODE_NETWORK=10.87.0.0/16        # the nodes' overlay addresses (kubelet's node IP)
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
NODEPORT_FIRST=30000 NODEPORT_COUNT=16
VXLAN_PORT=8472                  # inside every node
BLOCK=32 PORT_FLOOR=20000 PORT_SLOTS=384   # 20000 + 32 * 384 = 32288: below the ephemeral range
DEFAULT_COREDNS_IMAGE=registry.k8s.io/coredns/coredns:v1.14.2

say() { echo "cluster.sh: $*" >&2; }
die() { echo "cluster.sh: $*" >&2; exit 1; }
# The script's own stderr, for fail() called where a poll hides stderr (wait_until's command).
exec 9>&2

command=${1:-}
[ -n "$command" ] || { sed -n '2,42p' "$0"; exit 2; }
case "$command" in -h|--help|help) sed -n '2,42p' "$0"; exit 0 ;; esac
shift
dir=${ROOTLESS_CRI_CLUSTER_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/rootless-cri-cluster}
name="" port_base="" node_address="" host_address="" server="" token="" ca_hash="" coredns_image=$DEFAULT_COREDNS_IMAGE
api_sans=() positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="${2:?--dir needs a directory}"; shift 2 ;;
    --name) name="${2:?--name needs a node name}"; shift 2 ;;
    --port-base) port_base="${2:?--port-base needs a port}"; shift 2 ;;
    --node-address) node_address="${2:?--node-address needs an IPv4 address}"; shift 2 ;;
    --host-address) host_address="${2:?--host-address needs an IPv4 address}"; shift 2 ;;
    --server) server="${2:?--server needs HOST:PORT}"; shift 2 ;;
    --token) token="${2:?--token needs a token}"; shift 2 ;;
    --ca-hash) ca_hash="${2:?--ca-hash needs sha256:HEX}"; shift 2 ;;
    --api-san) api_sans+=("${2:?--api-san needs an IP address}"); shift 2 ;;
    --coredns-image) coredns_image="${2:?--coredns-image needs an image}"; shift 2 ;;
    -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
    -*) die "unknown option $1 (cluster.sh --help)" ;;
    *) positional+=("$1"); shift ;;
  esac
done
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
[ "$command" = remove-node ] || [ ${#positional[@]} -eq 0 ] || die "unexpected argument ${positional[0]} (cluster.sh --help)"

# ---- this node's settings --------------------------------------------------------------------
uid=$(id -u)
env_file="$dir/node.env"
# Saved by init/join; later commands take their values from it.
saved() { [ -r "$env_file" ] && sed -n "s/^$1=//p" "$env_file" | tail -n1; }
name_given=$name
[ -n "$name" ] || name=$(saved NAME || true)
[ -n "$port_base" ] || port_base=$(saved PORT_BASE || true)
[ -n "$node_address" ] || node_address=$(saved NODE_ADDRESS || true)
[ -n "$host_address" ] || host_address=$(saved HOST_ADDRESS || true)
[ -n "$host_address" ] || host_address=127.0.0.1
[[ "$host_address" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--host-address $host_address: expected an IPv4 address"
if [ -z "$name" ]; then
  name=$(printf '%s-%s' "$(hostname -s)" "$(id -un)" | tr 'A-Z_' 'a-z-' | tr -cd 'a-z0-9.-')
fi
[[ "$name" =~ ^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$ ]] || die "--name $name: not a valid node name (lower-case letters, digits, '-', '.')"
[ -n "$port_base" ] || port_base=$((PORT_FLOOR + BLOCK * (uid % PORT_SLOTS)))
[[ "$port_base" =~ ^[0-9]+$ ]] && [ "$port_base" -ge 1024 ] && [ $((port_base + BLOCK - 1)) -le 65535 ] ||
  die "--port-base $port_base: expected a port from 1024 to $((65535 - BLOCK + 1))"
[ -n "$node_address" ] || node_address="10.87.$(((uid >> 8) & 255)).$((uid & 255))"
[[ "$node_address" =~ ^10\.87\.[0-9]+\.[0-9]+$ ]] || die "--node-address $node_address: expected an address in $NODE_NETWORK"
api_port=$port_base kubelet_port=$((port_base + 1)) vxlan_host_port=$((port_base + 2))
streaming_port=$((port_base + 3)) metrics_port=$((port_base + 4)) nodeport_host_first=$((port_base + 16))

# ---- the node and its daemon -----------------------------------------------------------------
cli=(${ROOTLESS_CRI:-rootless-cri})
[ -z "${ROOTLESS_CRI_CONFIG:-}" ] || cli+=(--config "$ROOTLESS_CRI_CONFIG")
config_name=${ROOTLESS_CRI_CONFIG:-${XDG_CONFIG_HOME:-$HOME/.config}/rootless-cri/config.toml}
in_node() { "${cli[@]}" enter -- "$@"; }
k8s_bin=${ROOTLESS_CRI_K8S_BIN:-}
if [ -z "$k8s_bin" ]; then
  k8s_bin=$(ls -d /opt/rootless-cri-k8s-bin/v*/bin 2>/dev/null | sort -V | tail -n1)
fi

cmd_node_config() {
  cat <<EOF
# Cluster node $name (deploy/cluster/cluster.sh node-config --name $name --port-base $port_base):
# merge these keys into the rootless-cri config and restart \`rootless-cri serve\`.
[node]
hostname = "$name"
# The overlay's packets and kubelet's calls to the API server leave through the host's 127.0.0.1
# (slirp4netns' gateway); pods are kept from it by the overlay agent's guard.
disable_host_loopback = false

[network]
# The pod CIDR the controller-manager gives this node, written into the CNI config.
cni_conf_template = "$here/cni.conflist.template"

[streaming]
port = $streaming_port

[metrics]
port = $metrics_port
EOF
}

# The daemon must run with the node settings: checked from the config it was started with.
check_daemon() {
  command -v jq >/dev/null || die "jq is needed (sudo apt-get install jq)"
  command -v rootlessctl >/dev/null || die "rootlessctl is needed (the rootlesskit package)"
  [ -n "$k8s_bin" ] && [ -x "$k8s_bin/kubelet" ] || die "no Kubernetes binaries: run deploy/kubernetes/build.sh (as root) or set ROOTLESS_CRI_K8S_BIN"
  config_json=$("${cli[@]}" config) || die "cannot read the rootless-cri config ($config_name)"
  cfg() { jq -r "$1" <<<"$config_json"; }
  state_dir=$(cfg .node.stateDir)
  # Without --name (and nothing saved) the node is called what its config calls it.
  if [ -z "$name_given" ] && [ -z "$(saved NAME || true)" ] && [ "$(cfg .node.hostname)" != null ]; then
    name=$(cfg .node.hostname)
  fi
  local socket problems=()
  socket=$(cfg .socket)
  [ "$(cfg .node.hostname)" = "$name" ] || problems+=("node.hostname is $(cfg .node.hostname), not $name")
  [ "$(cfg .node.disableHostLoopback)" = false ] || problems+=("node.disable_host_loopback is not false")
  [ "$(cfg .network.cniConfTemplate)" != null ] || problems+=("network.cni_conf_template is not set")
  [ "$(cfg .streaming.port)" = "$streaming_port" ] || problems+=("streaming.port is $(cfg .streaming.port), not $streaming_port")
  [ "$(cfg .metrics.port)" = "$metrics_port" ] || problems+=("metrics.port is $(cfg .metrics.port), not $metrics_port")
  if [ ${#problems[@]} -gt 0 ]; then
    die "the rootless-cri config ($config_name) lacks this node's settings: $(IFS=';'; echo "${problems[*]}"). Merge in the output of \`cluster.sh node-config --name $name --port-base $port_base\` and restart rootless-cri serve"
  fi
  [ -S "$socket" ] || die "no rootless-cri daemon at $socket: start it (rootless-cri serve)"
  local running
  running=$(in_node hostname 2>/dev/null) || die "cannot enter the rootless node: is rootless-cri serve running?"
  [ "$running" = "$name" ] || die "the running node is named $running, not $name: restart rootless-cri serve after changing the config"
  uplink_gateway=$(in_node ip -4 route show default | sed -n 's/^default via \([0-9.]*\) .*/\1/p')
  [ -n "$uplink_gateway" ] || die "the node has no default route (slirp4netns): cannot reach the host"
}

# ---- host ports ------------------------------------------------------------------------------
port_taken() { # PORT tcp|udp
  [ -n "$(ss -Hln"${2:0:1}" "sport = :$1" 2>/dev/null)" ]
}

# Lines "PORT/PROTO WHAT" on stdin: all free, or stop before anything starts.
check_ports() {
  local spec what port proto
  while read -r spec what; do
    port=${spec%/*} proto=${spec#*/}
    if port_taken "$port" "$proto"; then
      die "host port $host_address:$port/$proto ($what) is already taken by another node or program; nothing was started. Give this node another --port-base (now $port_base; README, Several nodes)"
    fi
  done
}

node_ports() { # the scheme's ports every node publishes itself, one "PORT/PROTO WHAT" a line
  echo "$kubelet_port/tcp kubelet"
  echo "$vxlan_host_port/udp VXLAN"
  local i
  for ((i = 0; i < NODEPORT_COUNT; i++)); do echo "$((nodeport_host_first + i))/tcp NodePort $((NODEPORT_FIRST + i))"; done
}

published_file() { echo "$dir/run/ports"; }

publish() { # PORT/PROTO CHILD_IP:CHILD_PORT WHAT
  local port=${1%%/*} proto=${1#*/} child=$2 what=$3 out id
  if ! out=$(rootlessctl --socket "$state_dir/api.sock" add-ports --json "$host_address:$port:$child/$proto" 2>&1); then
    fail "cannot publish $what on the host's $host_address:$port/$proto: $out"
  fi
  id=$(jq -r '.id' <<<"$out" 2>/dev/null || echo "$out")
  echo "$id $port/$proto $what" >>"$(published_file)"
}

unpublish_all() {
  local file id rest
  file=$(published_file)
  [ -r "$file" ] || return 0
  if [ -z "${state_dir:-}" ]; then state_dir=$("${cli[@]}" config | jq -r .node.stateDir); fi
  while read -r id rest; do
    rootlessctl --socket "$state_dir/api.sock" remove-ports "$id" >/dev/null 2>&1 || true
  done <"$file"
  rm -f "$file"
}

# ---- components: background processes with a pid file and a log ------------------------------
started=()
pid_of() { cat "$dir/run/$1.pid" 2>/dev/null || true; }
running() { # COMPONENT: alive, and started from this dir (not a recycled pid)
  local pid
  pid=$(pid_of "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ "$(sed 's/.*) //; s/ .*//' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1   # not a zombie
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
  # Empty while it is between two programs (setsid, env, the launcher script and rootless-cri
  # exec one another): alive is enough then.
  [ -z "$cmdline" ] || grep -qF -- "$dir" <<<"$cmdline"
}

start_component() { # NAME COMMAND...
  local what=$1
  shift
  if running "$what"; then say "$what is already running (pid $(pid_of "$what"))"; return 0; fi
  mkdir -p "$dir/logs" "$dir/run"
  setsid "$@" >>"$dir/logs/$what.log" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/run/$what.pid"
  started+=("$what")
  say "started $what (pid $!, log $dir/logs/$what.log)"
}

descendants() { local c; for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done; }

stop_component() { # NAME: SIGTERM (rootless-cri enter forwards it), SIGKILL of the tree after 20 s
  local what=$1 pid i
  if ! running "$what"; then rm -f "$dir/run/$what.pid"; return 0; fi
  pid=$(pid_of "$what")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$what did not stop on SIGTERM: killing it"
    kill -KILL $(descendants "$pid") "$pid" 2>/dev/null || true
  fi
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$dir/run/$what.pid"
  say "stopped $what"
}

log_tail() { tail -n "${2:-15}" "$dir/logs/$1.log" 2>/dev/null | sed "s/^/  $1| /" >&2 || true; }

# A failure after something started: stop what this run started, then say why.
fail() {
  local i
  {
    say "$*"
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do log_tail "${started[i]}" 8; done
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do stop_component "${started[i]}"; done
    [ "${published_now:-0}" = 1 ] && unpublish_all
  } 2>&9
  exit 1
}

wait_until() { # SECONDS WHAT COMPONENT|- COMMAND...: polls COMMAND; fails early when COMPONENT exits
  local timeout=$1 what=$2 component=$3
  shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ "$component" != - ] && ! running "$component"; then fail "$component exited while waiting for $what"; fi
    [ $SECONDS -lt $deadline ] || fail "timed out after ${timeout}s waiting for $what"
    sleep 0.5
  done
}

# ---- PKI and kubeconfigs ----------------------------------------------------------------------
ossl() { local err; err=$(openssl "$@" 2>&1 >/dev/null) || die "openssl $1: $err"; }

signed_cert() { # NAME SUBJECT EXTENSIONS
  local pki="$dir/pki"
  ossl ecparam -name prime256v1 -genkey -noout -out "$pki/$1.key"
  ossl req -new -key "$pki/$1.key" -subj "$2" -out "$pki/$1.csr"
  printf '%b\n' "$3" >"$pki/$1.ext"
  ossl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 365 -sha256 \
    -extfile "$pki/$1.ext" -out "$pki/$1.crt"
  rm -f "$pki/$1.csr" "$pki/$1.ext"
}

kubeconfig() { # SERVER USER-JSON > file (JSON, which every Kubernetes client reads as YAML)
  jq -n --arg server "$1" --arg ca "$dir/pki/ca.crt" --argjson user "$2" '{
    apiVersion: "v1", kind: "Config",
    clusters: [{name: "rootless", cluster: {server: $server, "certificate-authority": $ca}}],
    users: [{name: "user", user: $user}],
    contexts: [{name: "rootless", context: {cluster: "rootless", user: "user"}}],
    "current-context": "rootless"}'
}

ca_hash_of() { openssl x509 -pubkey -noout -in "$1" | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1; }

make_pki() {
  local pki="$dir/pki" sans san
  mkdir -p "$pki" && chmod 700 "$pki"
  [ -e "$pki/ca.key" ] && return 0
  ossl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key"
  ossl req -x509 -new -key "$pki/ca.key" -subj "/CN=rootless-cri-cluster-ca" -days 3650 -out "$pki/ca.crt"
  # 10.0.2.2: the host's loopback as every node (slirp4netns' default network) reaches it.
  sans="IP:127.0.0.1,IP:$node_address,IP:$KUBERNETES_SERVICE_IP,IP:10.0.2.2"
  [ "$host_address" = 127.0.0.1 ] || sans+=",IP:$host_address"
  for san in "${api_sans[@]}"; do sans+=",IP:$san"; done
  sans+=",DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN"
  signed_cert apiserver /CN=kube-apiserver "subjectAltName=$sans\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature"
  signed_cert admin /O=system:masters/CN=kubernetes-admin "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature"
  ossl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key"
  ossl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
  local admin_user
  admin_user=$(jq -n --arg c "$pki/admin.crt" --arg k "$pki/admin.key" '{"client-certificate": $c, "client-key": $k}')
  kubeconfig https://127.0.0.1:6443 "$admin_user" >"$dir/admin.kubeconfig"
  kubeconfig "https://$host_address:$api_port" "$admin_user" >"$dir/admin-host.kubeconfig"
}

# kubectl's discovery cache goes with the node's files, not into ~/.kube.
kubectl_as() { local config=$1; shift; "$k8s_bin/kubectl" --kubeconfig "$config" --cache-dir "$dir/run/kubectl-cache" "$@"; }
kubectl_admin() { kubectl_as "$dir/admin-host.kubeconfig" "$@"; }
kubectl_node() { kubectl_as "$dir/node-host.kubeconfig" "$@"; }

new_token() {
  local id secret
  id=$(openssl rand -hex 3) && secret=$(openssl rand -hex 8) || die "openssl rand failed"
  kubectl_admin apply -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
 "metadata": {"name": "bootstrap-token-$id", "namespace": "kube-system"},
 "stringData": {"token-id": "$id", "token-secret": "$secret",
   "expiration": "$(date -u -d '+24 hours' +%Y-%m-%dT%H:%M:%SZ)",
   "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
   "auth-extra-groups": "system:bootstrappers:rootless-cri"}}
EOF
  echo "$id.$secret"
}

join_command() {
  echo "$here/cluster.sh join --server $host_address:$api_port --token $1 --ca-hash sha256:$(ca_hash_of "$dir/pki/ca.crt")"
}

# RBAC and discovery for joining nodes, and what kube-proxy and the overlay agent (which run with
# the node's own credentials) may read.
bootstrap_objects() {
  local ca_data
  ca_data=$(base64 -w0 <"$dir/pki/ca.crt")
  kubectl_admin apply -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "List", "items": [
 {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "rootless-cri:kubelet-bootstrap"},
  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node-bootstrapper"},
  "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:bootstrappers:rootless-cri"}]},
 {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "rootless-cri:node-autoapprove-bootstrap"},
  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:certificates.k8s.io:certificatesigningrequests:nodeclient"},
  "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:bootstrappers:rootless-cri"}]},
 {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "rootless-cri:node-autoapprove-certificate-rotation"},
  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"},
  "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]},
 {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "rootless-cri:node-proxier"},
  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node-proxier"},
  "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]},
 {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info", "namespace": "kube-public"},
  "data": {"kubeconfig": $(jq -n --arg ca "$ca_data" '{apiVersion: "v1", kind: "Config", clusters: [{name: "", cluster: {"certificate-authority-data": $ca, server: ""}}]}' | jq -Rs .)}},
 {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "rootless-cri:cluster-info", "namespace": "kube-public"},
  "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"], "verbs": ["get"]}]},
 {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "rootless-cri:cluster-info", "namespace": "kube-public"},
  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rootless-cri:cluster-info"},
  "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:bootstrappers:rootless-cri"}]}
]}
EOF
}

coredns_objects() {
  local corefile
  # As kubeadm deploys it, minus `forward`: no query leaves the cluster.
  corefile=$(printf '%s\n' '.:53 {' '    errors' '    health {' '        lameduck 1s' '    }' '    ready' \
    "    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {" '        pods insecure' \
    '        fallthrough in-addr.arpa ip6.arpa' '    }' '    cache 30' '    loadbalance' '}' | jq -Rs .)
  kubectl_admin apply -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "List", "items": [
 {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": "kube-system"}},
 {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
  "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
 {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system:coredns"},
  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
  "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]},
 {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"}, "data": {"Corefile": $corefile}},
 {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
  "spec": {"replicas": 1, "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
   "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}},
    "spec": {"serviceAccountName": "coredns", "dnsPolicy": "Default",
     "containers": [{"name": "coredns", "image": "$coredns_image", "args": ["-conf", "/etc/coredns/Corefile"],
       "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}, {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}],
       "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": true}],
       "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 1},
       "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10}}],
     "volumes": [{"name": "config", "configMap": {"name": "coredns"}}]}}}},
 {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
  "spec": {"clusterIP": "$DNS_SERVICE_IP", "selector": {"k8s-app": "kube-dns"},
   "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}
]}
EOF
}

save_settings() { # ROLE SERVER (the API server, host:port, as seen from the host)
  mkdir -p "$dir" && chmod 700 "$dir"
  {
    echo "NAME=$name"
    echo "ROLE=$1"
    echo "PORT_BASE=$port_base"
    echo "NODE_ADDRESS=$node_address"
    echo "HOST_ADDRESS=$host_address"
    echo "SERVER=$2"
  } >"$env_file"
}


# ---- joining this node (init does it too, for the control plane's own node) ------------------
# SERVER_IN_NODE: the API server as seen from inside this node; SERVER_ON_HOST: from the host.
join_node() {
  local server_in_node=$1 server_on_host=$2 socket
  socket=$(cfg .socket)
  mkdir -p "$dir/run" "$dir/logs"
  if [ -n "${token:-}" ]; then
    kubeconfig "$server_in_node" "$(jq -n --arg t "$token" '{token: $t}')" >"$dir/bootstrap.kubeconfig"
    chmod 600 "$dir/bootstrap.kubeconfig"
  fi
  [ -e "$dir/kubelet.kubeconfig" ] || [ -e "$dir/bootstrap.kubeconfig" ] || die "no credentials for kubelet: give --token"
  kubeconfig "https://$server_on_host" \
    "$(jq -n --arg c "$dir/kubelet/pki/kubelet-client-current.pem" '{"client-certificate": $c, "client-key": $c}')" \
    >"$dir/node-host.kubeconfig"

  published_now=1
  local i
  publish "$kubelet_port/tcp" "$node_address:10250" kubelet
  publish "$vxlan_host_port/udp" "127.0.0.1:$VXLAN_PORT" VXLAN
  for ((i = 0; i < NODEPORT_COUNT; i++)); do
    publish "$((nodeport_host_first + i))/tcp" "$node_address:$((NODEPORT_FIRST + i))" "NodePort $((NODEPORT_FIRST + i))"
  done

  # The overlay first: its device carries the node address kubelet registers with.
  start_component overlay "${cli[@]}" enter -- "${cli[@]}" overlay \
    --server "$server_in_node" --ca-file "$dir/pki/ca.crt" \
    --cert-file "$dir/kubelet/pki/kubelet-client-current.pem" --node "$name" \
    --address "$node_address" --endpoint "$host_address:$vxlan_host_port" \
    --cluster-cidr "$CLUSTER_CIDR" --node-network "$NODE_NETWORK" --port "$VXLAN_PORT"
  wait_until 60 "the overlay device with $node_address" overlay \
    sh -c "\"\$@\" ip -4 -o addr show dev vxlan0 | grep -qF ' $node_address/'" sh "${cli[@]}" enter --

  local kubelet_env=(
    KUBELET="$k8s_bin/kubelet" KUBE_PROXY="$k8s_bin/kube-proxy"
    ROOTLESS_CRI="${ROOTLESS_CRI:-rootless-cri}" ROOTLESS_CRI_CONFIG="${ROOTLESS_CRI_CONFIG:-}"
    ROOTLESS_CRI_SOCKET="$socket" KUBELET_ROOT_DIR="$dir/kubelet" KUBELET_MANIFESTS="$dir/manifests"
    KUBELET_DROPINS="$dir/kubelet.conf.d" KUBELET_RUN_DIR="$dir/run/kubelet"
  )
  local bootstrap_args=()
  [ -e "$dir/kubelet.kubeconfig" ] || bootstrap_args=(--bootstrap-kubeconfig "$dir/bootstrap.kubeconfig")
  start_component kubelet env "${kubelet_env[@]}" "$deploy/kubelet/kubelet.sh" \
    --kubeconfig "$dir/kubelet.kubeconfig" "${bootstrap_args[@]}" --client-ca "$dir/pki/ca.crt" \
    --cluster-dns "$DNS_SERVICE_IP" --cluster-domain "$CLUSTER_DOMAIN" -- --node-ip="$node_address" \
    --cert-dir="$dir/kubelet/pki"   # (its default is /var/lib/kubelet/pki, the node's copy-up tmpfs)
  wait_until 120 "kubelet's client certificate (TLS bootstrap)" kubelet test -s "$dir/kubelet.kubeconfig"
  rm -f "$dir/bootstrap.kubeconfig"   # the token has done its job

  # kube-proxy and the overlay read with the node's own credentials (RBAC: system:node-proxier).
  start_component kube-proxy env "${kubelet_env[@]}" "$deploy/kubelet/kube-proxy.sh" \
    --kubeconfig "$dir/kubelet.kubeconfig" --cluster-cidr "$CLUSTER_CIDR" -- --hostname-override="$name"

  # Ready, and announced by the overlay agent (until then no other node can reach it). kubelet's
  # own health first: after a restart the Node may still show the Ready of the previous run.
  node_ready() {
    for c in overlay kubelet kube-proxy; do running "$c" || fail "$c exited while waiting for node $name to be Ready"; done
    [ "$(in_node curl -s --max-time 5 http://127.0.0.1:10248/healthz 2>/dev/null)" = ok ] || return 1
    [ "$(kubectl_node get node "$name" -o \
      'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.metadata.annotations.overlay\.rootless-cri\.io/address}' \
      2>/dev/null)" = "True $node_address" ]
  }
  wait_until 180 "node $name to be Ready and announced on the overlay" - node_ready
  say "node $name is Ready (address $node_address, pod CIDR $(kubectl_node get node "$name" -o 'jsonpath={.spec.podCIDR}'))"
}

up_already() {
  local c
  for c in kubelet overlay kube-proxy; do
    running "$c" && die "this node is already up ($c runs from $dir); \`cluster.sh down\` first"
  done
  return 0
}

# ---- init: the control plane in this node -----------------------------------------------------
cmd_init() {
  local role
  role=$(saved ROLE || true)
  [ -z "$role" ] || [ "$role" = control-plane ] || die "$dir belongs to a $role node: give another --dir"
  check_daemon
  up_already
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    running "$c" && die "the control plane already runs from $dir ($c); \`cluster.sh down\` first"
  done
  { echo "$api_port/tcp API server"; node_ports; } | check_ports
  make_pki
  save_settings control-plane "$host_address:$api_port"
  local pki="$dir/pki" admin="$dir/admin.kubeconfig"
  start_component etcd "${cli[@]}" enter -- "$k8s_bin/etcd" --name="$name" --data-dir="$dir/etcd" \
    --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
    --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster="$name=http://127.0.0.1:2380" ${ETCD_EXTRA_ARGS:-}
  # --kubelet-preferred-address-types: kubelets by their overlay address (node names resolve
  # nowhere but in their own node).
  start_component kube-apiserver "${cli[@]}" enter -- "$k8s_bin/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 --secure-port=6443 --advertise-address="$node_address" \
    --service-cluster-ip-range="$SERVICE_CIDR" --service-node-port-range="$NODEPORT_FIRST-$((NODEPORT_FIRST + NODEPORT_COUNT - 1))" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" --client-ca-file="$pki/ca.crt" \
    --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --kubelet-client-certificate="$pki/admin.crt" --kubelet-client-key="$pki/admin.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --enable-bootstrap-token-auth
  published_now=1
  publish "$api_port/tcp" 127.0.0.1:6443 "API server"
  api_ready() { curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "https://$host_address:$api_port/readyz"; }
  wait_until 120 "the API server to be ready" kube-apiserver api_ready
  bootstrap_objects || fail "cannot create the bootstrap RBAC and cluster-info objects"
  start_component kube-controller-manager "${cli[@]}" enter -- "$k8s_bin/kube-controller-manager" \
    --kubeconfig="$admin" --authentication-kubeconfig="$admin" --authorization-kubeconfig="$admin" \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --controllers='*,bootstrapsigner,tokencleaner' --use-service-account-credentials=false \
    --allocate-node-cidrs=true --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size="$NODE_CIDR_MASK" \
    --service-cluster-ip-range="$SERVICE_CIDR" --leader-elect=false --bind-address=127.0.0.1
  start_component kube-scheduler "${cli[@]}" enter -- "$k8s_bin/kube-scheduler" \
    --kubeconfig="$admin" --authentication-kubeconfig="$admin" --authorization-kubeconfig="$admin" \
    --leader-elect=false --bind-address=127.0.0.1
  coredns_objects || fail "cannot create CoreDNS"
  token=$(new_token) || fail "cannot create a bootstrap token"
  join_node https://127.0.0.1:6443 "$host_address:$api_port"
  # That token only served this node's kubelet.
  kubectl_admin -n kube-system delete secret "bootstrap-token-${token%%.*}" >/dev/null 2>&1 || true
  say "control plane up; kubectl on this host: KUBECONFIG=$dir/admin-host.kubeconfig"
  say "join a worker (as its user, with its own --name and --port-base) with:"
  join_command "$(new_token)"
}

# ---- join: a worker ---------------------------------------------------------------------------
cmd_join() {
  local role
  role=$(saved ROLE || true)
  [ -z "$role" ] || [ "$role" = worker ] || die "$dir belongs to the $role: give another --dir"
  [ -n "$server" ] || server=$(saved SERVER || true)
  [ -n "$server" ] || die "--server HOST:PORT is required (the API server's published port: \`cluster.sh token\` on the control plane prints the command)"
  [[ "$server" =~ ^([0-9.]+):([0-9]+)$ ]] || die "--server $server: expected IPv4-address:port, e.g. 127.0.0.1:20000"
  local server_ip=${BASH_REMATCH[1]} server_port=${BASH_REMATCH[2]}
  check_daemon
  up_already
  node_ports | check_ports
  mkdir -p "$dir/pki" && chmod 700 "$dir" "$dir/pki"
  if [ ! -e "$dir/kubelet.kubeconfig" ]; then
    [ -n "$token" ] && [ -n "$ca_hash" ] || die "--token and --ca-hash are required to join (\`cluster.sh token\` on the control plane)"
    [[ "$token" =~ ^[a-z0-9]{6}\.[a-z0-9]{16}$ ]] || die "--token: expected a bootstrap token like abcdef.0123456789abcdef"
    # The CA comes from the cluster-info ConfigMap over a TLS connection not yet trusted; it is
    # trusted only if its public key has the hash the control plane printed (as kubeadm join).
    local info ca
    info=$(curl -sk --max-time 20 -H "Authorization: Bearer $token" \
      "https://$server/api/v1/namespaces/kube-public/configmaps/cluster-info") ||
      die "cannot reach the API server at https://$server"
    ca=$(jq -r '.data.kubeconfig' <<<"$info" 2>/dev/null | jq -r '.clusters[0].cluster["certificate-authority-data"]' 2>/dev/null) ||
      die "no cluster-info from https://$server (is the token valid?): $(head -c 300 <<<"$info")"
    base64 -d <<<"$ca" >"$dir/pki/ca.crt.new" 2>/dev/null || die "cluster-info holds no CA certificate"
    local got
    got=$(ca_hash_of "$dir/pki/ca.crt.new" 2>/dev/null || true)
    if [ "sha256:$got" != "$ca_hash" ]; then
      rm -f "$dir/pki/ca.crt.new"
      die "the cluster's CA (sha256:$got) does not match --ca-hash $ca_hash: not joining"
    fi
    mv "$dir/pki/ca.crt.new" "$dir/pki/ca.crt"
  fi
  # From inside the node, the host's loopback is slirp4netns' gateway.
  local server_in_node="https://$server"
  [[ "$server_ip" =~ ^127\. ]] && server_in_node="https://$uplink_gateway:$server_port"
  in_node curl -s --max-time 10 --cacert "$dir/pki/ca.crt" -o /dev/null "$server_in_node/healthz" ||
    die "the node cannot reach the API server at $server_in_node (from the host: https://$server); with a server on the host's 127.0.0.1 the node needs node.disable_host_loopback = false"
  save_settings worker "$server"
  join_node "$server_in_node" "$server"
}

cmd_token() {
  [ "$(saved ROLE || true)" = control-plane ] || die "no control plane in $dir (cluster.sh init)"
  port_base=$(saved PORT_BASE); api_port=$port_base
  [ -n "$k8s_bin" ] || die "no Kubernetes binaries (ROOTLESS_CRI_K8S_BIN)"
  join_command "$(new_token)"
}

# Components in stopping order.
COMPONENTS=(kube-proxy kubelet overlay kube-scheduler kube-controller-manager kube-apiserver etcd)

cmd_down() {
  [ -r "$env_file" ] || die "no cluster node in $dir"
  local c
  for c in "${COMPONENTS[@]}"; do stop_component "$c"; done
  unpublish_all
  local again=join
  [ "$(saved ROLE || true)" = control-plane ] && again=init
  say "node $name is down; its files stay in $dir (\`cluster.sh $again\` starts it again)"
}

cmd_leave() {
  [ -r "$env_file" ] || die "no cluster node in $dir"
  [ "$(saved ROLE)" = worker ] || die "the control plane's node does not leave; \`cluster.sh down\` stops it"
  local c pods
  pods=$(kubectl_node get pods -A --field-selector "spec.nodeName=$name" \
    -o 'jsonpath={range .items[?(@.metadata.ownerReferences[0].kind!="DaemonSet")]}{.metadata.namespace}/{.metadata.name} {end}' 2>/dev/null || true)
  [ -z "$pods" ] || say "pods still on $name (\`cluster.sh remove-node $name\` on the control plane drains it first): $pods"
  for c in kube-proxy kubelet overlay; do stop_component "$c"; done
  unpublish_all
  # kubelet's volume mounts live in the node's mount namespace; files of pods may belong to
  # subordinate ids: both are the node's to remove.
  in_node sh -c 'grep -F " $1/" /proc/self/mountinfo | cut -d" " -f5 | sort -r | while read -r m; do umount "$m"; done; rm -rf "$1"' sh "$dir" ||
    rm -rf "$dir" || die "could not remove $dir (files of pods may belong to the node's subordinate ids: remove it with \`rootless-cri enter -- rm -rf $dir\` while the node runs)"
  say "node $name left the cluster; the rootless node itself still runs (rootless-cri stop --all ends it)"
}

# (control plane) Drain a node and delete its Node object; the node's user then runs `leave`. A
# node cannot delete its own Node (the Node authorizer lets it update, not delete, it).
cmd_remove_node() {
  local target=${1:-}
  [ -n "$target" ] || die "remove-node needs the node's name"
  [ "$(saved ROLE || true)" = control-plane ] || die "no control plane in $dir (remove-node runs there)"
  [ "$target" != "$name" ] || die "the control plane's own node is not removed; \`cluster.sh down\` stops it"
  port_base=$(saved PORT_BASE); api_port=$port_base
  kubectl_admin get node "$target" >/dev/null || die "no node $target in the cluster"
  kubectl_admin drain "$target" --ignore-daemonsets --delete-emptydir-data --force --grace-period=10 --timeout=180s >&2 ||
    die "could not drain $target; nothing was deleted"
  kubectl_admin delete node "$target" >&2 || die "could not delete node $target"
  say "node $target drained and deleted; its user runs \`cluster.sh leave\` to stop it and remove its files"
}

cmd_kubeconfig() {
  [ -r "$dir/admin-host.kubeconfig" ] || die "no control plane in $dir"
  echo "$dir/admin-host.kubeconfig"
}

case "$command" in
  node-config) cmd_node_config ;;
  init) cmd_init ;;
  join) cmd_join ;;
  token) cmd_token ;;
  kubeconfig) cmd_kubeconfig ;;
  down) cmd_down ;;
  leave) cmd_leave ;;
  remove-node) cmd_remove_node "${positional[0]:-}" ;;
  *) die "unknown command $command (cluster.sh --help)" ;;
esac
