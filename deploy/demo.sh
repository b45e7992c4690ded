#!/usr/bin/env bash
# `make demo`: on a fresh Debian 12 machine, as root, install what is missing, create an
# unprivileged user (default rcri-demo) with subuid/subgid ranges and a delegated cgroup v2
# subtree, start the rootless node and the daemon as that user, and show crictl talking to it.
# Run as an unprivileged user on a prepared host, it starts the daemon as yourself.
# Several demos (other users, `make test`) can run on one host: the app dir, the temp files,
# the registry port and the host port are the demo user's own.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_USER=${ROOTLESS_CRI_DEMO_USER:-rcri-demo}
APP=${ROOTLESS_CRI_DEMO_APP:-/opt/rootless-cri/users/$DEMO_USER}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "$(id -u)" -eq 0 ]; then
  say "installing (Debian packages, crictl/critest, npm build) and preparing user $DEMO_USER"
  bash deploy/install.sh --user "$DEMO_USER" --app-dir "$APP"
  as_user() { bash "$APP/deploy/run-as-user.sh" "$DEMO_USER" -- "$@"; }
  uid=$(id -u "$DEMO_USER")
  node=$APP/node/bin/node
  app_dir=$APP
  cli=("$APP/bin/rootless-cri")
else
  bash deploy/install.sh
  as_user() { "$@"; }
  uid=$(id -u)
  node=$(bash deploy/install-node.sh --check)/node
  app_dir=$(pwd)
  cli=("$node" "$app_dir/dist/src/cli.js")
fi
say "Node.js $("$node" --version) ($node)"
# This demo user's own files: another user's demo, or `make test`, never shares them.
demo_dir=/tmp/rootless-cri-demo.$(as_user id -un)
mkdir -p "$demo_dir" && chmod 0755 "$demo_dir"
free_port() { "$node" -e 's=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
socket=/run/user/$uid/rootless-cri/rootless-cri.sock
crictl_config=$demo_dir/crictl.yaml
printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\n' "$socket" "$socket" >"$crictl_config"
chmod 0644 "$crictl_config"
crictl=(crictl --config "$crictl_config")

say "rootless-cri doctor"
as_user "${cli[@]}" doctor || echo "(doctor lists what is missing above; the demo goes on where it safely can)"

say "starting the rootless node and the daemon as $(as_user id -un)"
as_user "${cli[@]}" stop >/dev/null 2>&1 || true
log=$demo_dir/daemon.log
as_user "${cli[@]}" serve >"$log" 2>&1 &
for _ in $(seq 100); do
  as_user "${crictl[@]}" version >/dev/null 2>&1 && break
  sleep 0.2
done

say "crictl version (from the host)"
as_user "${crictl[@]}" version
say "crictl info (conditions; the full verbose info has config, node facts and listeners)"
as_user "${crictl[@]}" info -o go-template --template '{{range .status.conditions}}{{.type}}={{.status}} {{.reason}} {{.message}}{{"\n"}}{{end}}' 
say "crictl version, from inside the node (rootless-cri enter)"
as_user "${cli[@]}" enter -- "${crictl[@]}" version

# The demo's own registry on a port the kernel picked; a rerun reuses it while it runs.
registry_dir=$demo_dir/registry
registry_port=$(cat "$registry_dir/port" 2>/dev/null || true)
registry_pid=$(cat "$registry_dir/pid" 2>/dev/null || true)
if [ -z "$registry_pid" ] || ! kill -0 "$registry_pid" 2>/dev/null ||
  ! curl -fsS "http://127.0.0.1:$registry_port/v2/" >/dev/null 2>&1; then
  registry_port=$(free_port)
  mkdir -p "$registry_dir/data"
  cat >"$registry_dir/config.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $registry_dir/data
http:
  addr: 127.0.0.1:$registry_port
YAML
  nohup docker-registry serve "$registry_dir/config.yml" >"$registry_dir/registry.log" 2>&1 &
  echo $! >"$registry_dir/pid"
  echo "$registry_port" >"$registry_dir/port"
  for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$registry_port/v2/" >/dev/null 2>&1 && break; sleep 0.2; done
fi
say "a local registry on 127.0.0.1:$registry_port with the project's HTTP test image (built from busybox)"
"$node" "$app_dir/dist/test/fixtures/push-test-images.js" --registry "127.0.0.1:$registry_port" --images http-server \
  --cache-dir "$registry_dir/cache"
image=127.0.0.1:$registry_port/rootless-cri/http-server:1

say "crictl pull $image"
as_user "${crictl[@]}" pull "$image"

host_port=$(free_port)
say "a pod with a container serving HTTP on host port $host_port"
work=$(as_user mktemp -d)
as_user sh -c "cat > $work/pod.json" <<JSON
{"metadata": {"name": "demo", "namespace": "default", "uid": "demo-$(date +%s)", "attempt": 0},
 "hostname": "demo", "log_directory": "$work/logs",
 "port_mappings": [{"protocol": 0, "container_port": 8080, "host_port": $host_port, "host_ip": "127.0.0.1"}],
 "linux": {}}
JSON
as_user sh -c "cat > $work/ctr.json" <<JSON
{"metadata": {"name": "web"}, "image": {"image": "$image"}, "log_path": "web.log"}
JSON
# A pod left by an earlier demo run holds a host port: remove it first.
for old in $(as_user "${crictl[@]}" pods --name demo -q); do as_user "${crictl[@]}" rmp -f "$old" >/dev/null; done
pod=$(as_user "${crictl[@]}" runp "$work/pod.json")
ctr=$(as_user "${crictl[@]}" create "$pod" "$work/ctr.json" "$work/pod.json")
as_user "${crictl[@]}" start "$ctr" >/dev/null
as_user "${crictl[@]}" pods
as_user "${crictl[@]}" ps

say "curl http://127.0.0.1:$host_port/ from the host"
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$host_port/" && break; sleep 0.2; done

say "done"
echo "The daemon, the pod and the registry keep running (daemon log: $log)."
echo "Remove the pod:  crictl --config $crictl_config rmp -f $pod   (as $(as_user id -un))"
echo "Stop the registry: kill $(cat "$registry_dir/pid")"
echo "Stop the daemon and the node with:"
if [ "$(id -u)" -eq 0 ]; then
  echo "  $APP/deploy/run-as-user.sh $DEMO_USER -- rootless-cri stop --all   (~$DEMO_USER/.local/bin/rootless-cri)"
else
  echo "  rootless-cri stop --all"
fi
