#!/usr/bin/env bash
# `make demo`: on a fresh Debian 12 machine, as root, install what is missing, create an
# unprivileged user (default rcri-demo) with subuid/subgid ranges and a delegated cgroup v2
# subtree, start the rootless node and the daemon as that user, and show crictl talking to it.
# Run as an unprivileged user on a prepared host, it starts the daemon as yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_USER=${ROOTLESS_CRI_DEMO_USER:-rcri-demo}
APP=/opt/rootless-cri

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "$(id -u)" -eq 0 ]; then
  say "installing (Debian packages, crictl/critest, npm build) and preparing user $DEMO_USER"
  bash deploy/install.sh --user "$DEMO_USER" --app-dir "$APP"
  as_user() { bash "$APP/deploy/run-as-user.sh" "$DEMO_USER" -- "$@"; }
  uid=$(id -u "$DEMO_USER")
  cli=(node "$APP/dist/src/cli.js")
else
  bash deploy/install.sh
  as_user() { "$@"; }
  uid=$(id -u)
  cli=(node "$(pwd)/dist/src/cli.js")
fi
socket=/run/user/$uid/rootless-cri/rootless-cri.sock
crictl_config=/tmp/rootless-cri-demo-crictl.yaml
printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\n' "$socket" "$socket" >"$crictl_config"
chmod 0644 "$crictl_config"
crictl=(crictl --config "$crictl_config")

say "rootless-cri doctor"
as_user "${cli[@]}" doctor || echo "(doctor lists what is missing above; the demo goes on where it safely can)"

say "starting the rootless node and the daemon as $(as_user id -un)"
as_user "${cli[@]}" stop >/dev/null 2>&1 || true
log=/tmp/rootless-cri-demo.log
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

say "done"
echo "The daemon keeps running (log: $log). Stop it and the node with:"
if [ "$(id -u)" -eq 0 ]; then
  echo "  $APP/deploy/run-as-user.sh $DEMO_USER -- rootless-cri stop --all"
else
  echo "  rootless-cri stop --all"
fi
