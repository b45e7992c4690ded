#!/usr/bin/env bash
# Run a command as an unprivileged user inside the cgroup v2 subtree that
# deploy/setup-host.sh delegated to it (what a systemd user session with Delegate=yes
# gives a user's services). Run as root:
#
#   deploy/run-as-user.sh NAME [--env K=V]... -- COMMAND [ARGS...]
#
# The command starts in <subtree>/launch, a leaf cgroup, with HOME, USER and
# XDG_RUNTIME_DIR=/run/user/UID set like a login would; rootless-cri moves itself from there.
# PATH starts with ~/.local/bin (where deploy/install.sh links the user's own `rootless-cri`)
# and, run from an installed app dir, the app's pinned Node.js.
set -euo pipefail
user="${1:?usage: run-as-user.sh NAME [--env K=V]... -- COMMAND...}"
shift
envs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --env) envs+=("$2"); shift 2 ;;
    *) echo "run-as-user: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "run-as-user: no command given" >&2; exit 2; }

uid=$(id -u "$user")
gid=$(id -g "$user")
home=$(getent passwd "$user" | cut -d: -f6)
marker="/run/user/$uid/.rootless-cri-cgroup"
if [ -r "$marker" ]; then
  sub=$(cat "$marker")
  if [ -d "$sub" ]; then
    mkdir -p "$sub/launch"
    chown "$uid:$gid" "$sub/launch" "$sub/launch/cgroup.procs" 2>/dev/null || true
    echo $$ >"$sub/launch/cgroup.procs"
  fi
fi
# An app dir installed by deploy/install.sh has <app>/node -> the pinned Node.js.
node_path=""
app=$(dirname "$(dirname "$(readlink -f "$0")")")
[ -x "$app/node/bin/node" ] && node_path="$app/node/bin:"
cd /
exec setpriv --reuid="$uid" --regid="$gid" --init-groups --reset-env \
  env HOME="$home" USER="$user" LOGNAME="$user" XDG_RUNTIME_DIR="/run/user/$uid" \
  PATH="$home/.local/bin:${node_path}/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" "${envs[@]}" "$@"
