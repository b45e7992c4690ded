#!/usr/bin/env bash
# Prepare a Debian 12 host for rootless-cri (idempotent; run as root).
#
#   deploy/setup-host.sh [--user NAME] [--subids N] [--renumber-subids] [--no-packages]
#
# - installs the Debian packages rootless-cri drives (rootlesskit, slirp4netns, catatonit,
#   crun, conmon, fuse-overlayfs, uidmap, CNI plugins, iptables, ...);
# - makes /dev/fuse and /dev/net/tun usable by unprivileged users (0666, as a normal distro does);
# - with --user NAME: creates that unprivileged user if missing, gives it subuid/subgid ranges of
#   1,048,576 IDs in all (--subids N to change: the node's own 65,536 plus room for pods with
#   their own user namespace, 65,536 each), and a delegated cgroup v2 subtree.
#
# cgroup v2 delegation. On a systemd host the right way is systemd's own delegation:
#   mkdir -p /etc/systemd/system/user@.service.d
#   printf '[Service]\nDelegate=cpu cpuset io memory pids\n' > /etc/systemd/system/user@.service.d/delegate.conf
#   systemctl daemon-reload
# and the user's rootless-cri runs from `systemctl --user` (deploy/rootless-cri.service).
# On hosts without systemd as PID 1 (containers, CI VMs, hybrid cgroup layouts) this script
# creates <cgroup2 mount>/rootless-cri.NAME, chowns it to the user (what Delegate=yes does),
# and deploy/run-as-user.sh starts commands as the user inside it.
set -euo pipefail

user=""
packages=1
subids=1048576
renumber=0
while [ $# -gt 0 ]; do
  case "$1" in
    --user) user="${2:?--user needs a name}"; shift 2 ;;
    --subids) subids="${2:?--subids needs a count}"; shift 2 ;;
    --renumber-subids) renumber=1; shift ;;
    --no-packages) packages=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "setup-host: unknown argument $1" >&2; exit 2 ;;
  esac
done

case "$subids" in *[!0-9]*|'') echo "setup-host: --subids takes a number" >&2; exit 2 ;; esac
if [ "$subids" -lt 65536 ] || [ $((subids % 65536)) -ne 0 ]; then
  echo "setup-host: --subids must be a multiple of 65536, at least 65536" >&2
  exit 2
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host: must run as root (it installs packages and delegates a cgroup)" >&2
  exit 1
fi

log() { echo "setup-host: $*"; }

PACKAGES=(rootlesskit slirp4netns catatonit crun conmon fuse-overlayfs fuse3 uidmap
  containernetworking-plugins iptables util-linux iproute2 procps busybox-static
  docker-registry apache2-utils openssl curl jq socat gcc libc6-dev make
  zlib1g-dev libzstd-dev libssl-dev)

if [ "$packages" = 1 ]; then
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # docker-registry's maintainer script tries to start a system service; nothing needs it.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # The Debian package starts a registry on :5000 where an init system runs it; the tests start
  # their own registries on 127.0.0.1, so stop a packaged one if it is running.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
fi

# Devices: fuse-overlayfs needs /dev/fuse, slirp4netns needs /dev/net/tun.
for dev in /dev/fuse /dev/net/tun; do
  if [ -e "$dev" ] && [ "$(stat -c %a "$dev")" != 666 ]; then
    chmod 0666 "$dev"
    log "made $dev usable by unprivileged users (0666)"
  fi
done

# Unprivileged user namespaces must be allowed (Debian 12 allows them by default).
if [ -e /proc/sys/kernel/unprivileged_userns_clone ] && [ "$(cat /proc/sys/kernel/unprivileged_userns_clone)" = 0 ]; then
  echo 1 > /proc/sys/kernel/unprivileged_userns_clone
  log "enabled kernel.unprivileged_userns_clone"
fi

# The overlay between the nodes of a cluster (deploy/cluster/cluster.sh) is a VXLAN device, which
# a user namespace can create but cannot make the kernel load: load the module when it is one.
if [ ! -d /sys/module/vxlan ] && command -v modprobe >/dev/null 2>&1; then
  modprobe vxlan 2>/dev/null && log "loaded the vxlan kernel module" || log "no vxlan kernel module: nodes cannot form a cluster's overlay"
fi

[ -n "$user" ] || exit 0

if ! id -u "$user" >/dev/null 2>&1; then
  # Without subordinate ids of useradd's choosing (65,536 on Debian): ensure_range gives one range.
  useradd --create-home --shell /bin/bash -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 "$user"
  log "created user $user"
fi
uid=$(id -u "$user")

# subuid/subgid: $subids IDs in all per file, in ranges nobody else uses. The node maps them
# after the user's own id, in file order (rootlesskit), so node ids 1..65535 are the user's first
# 65,535 subordinate ids and pods with their own user namespace (hostUsers: false) use the rest.
# A user who already has fewer (65,536 was the old size) gets the missing ids as one more range
# after every existing one: the ids they had keep their place in the node, and a running node
# keeps its mapping until it is restarted (`rootless-cri stop --all`, then serve). A user with
# as many or more is left alone. With --renumber-subids, a user whose ids are not one range of
# $subids is given one instead (the old lines are removed), unless it has running processes:
# files its node stored under the old ids (images, container layers) then show as nobody, so
# it is for users whose node keeps nothing (test users) or whose images are removed first. One
# range matters because a pod's id mapping must fall within one of the node's ranges: the
# runtime splits a mapping that crosses from one to the next into several lines.
ensure_range() { # file
  local file=$1 have=0 ranges=0 start=100000 end owner s n
  touch "$file"
  while IFS=: read -r owner s n || [ -n "${owner:-}" ]; do
    [ -n "${s:-}" ] && [ -n "${n:-}" ] || continue
    case "$s$n" in *[!0-9]*) continue ;; esac
    end=$((s + n))
    [ "$end" -gt "$start" ] && start=$end
    if [ "$owner" = "$user" ] || [ "$owner" = "$uid" ]; then
      have=$((have + n))
      ranges=$((ranges + 1))
    fi
  done <"$file"
  if [ "$renumber" = 1 ] && [ "$ranges" -gt 0 ] && { [ "$ranges" -gt 1 ] || [ "$have" -lt "$subids" ]; }; then
    if pgrep -u "$user" >/dev/null; then
      log "$user has running processes: its $file ranges are not renumbered (stop its node with rootless-cri stop --all, then re-run)"
    else
      awk -F: -v u="$user" -v id="$uid" '$1 != u && $1 != id' "$file" >"$file.rootless-cri.tmp"
      cat "$file.rootless-cri.tmp" >"$file"
      rm -f "$file.rootless-cri.tmp"
      log "removed $user's $ranges $file range(s) of $have ids, to give one range"
      have=0
    fi
  fi
  [ "$have" -lt "$subids" ] || return 0
  # A last line without its newline would otherwise swallow ours.
  if [ -s "$file" ] && [ -n "$(tail -c1 "$file")" ]; then echo >>"$file"; fi
  echo "$user:$start:$((subids - have))" >>"$file"
  if [ "$have" -eq 0 ]; then
    log "gave $user $file range $start-$((start + subids - 1))"
  else
    log "extended $user's $file ids from $have to $subids (added $start-$((start + subids - have - 1))); a running node of $user keeps its old mapping until it is restarted"
  fi
}
exec 9>/run/rootless-cri-setup-host.lock
flock 9
ensure_range /etc/subuid
ensure_range /etc/subgid
flock -u 9

# The user's runtime dir, as pam_systemd would create it.
install -d -m 0700 -o "$user" -g "$(id -g "$user")" "/run/user/$uid"

# cgroup v2 subtree owned by the user.
cg2=""
if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then
  cg2=/sys/fs/cgroup
elif [ -d /sys/fs/cgroup/unified ] && [ "$(stat -f -c %T /sys/fs/cgroup/unified)" = cgroup2fs ]; then
  cg2=/sys/fs/cgroup/unified
fi
if [ -z "$cg2" ]; then
  log "warning: no cgroup v2 hierarchy mounted; rootless-cri will run without cgroups"
  exit 0
fi
if [ -d /run/systemd/system ] && [ "$cg2" = /sys/fs/cgroup ]; then
  log "systemd host: delegate with Delegate=yes on user@.service (see the comment at the top of this script)"
fi
sub="$cg2/rootless-cri.$user"
mkdir -p "$sub"
# Enable every controller the root offers in the subtree, so it can be delegated further.
for c in $(cat "$cg2/cgroup.controllers"); do
  echo "+$c" >"$cg2/cgroup.subtree_control" 2>/dev/null || true
done
chown -R "$user:$(id -g "$user")" "$sub"
echo "$sub" >"/run/user/$uid/.rootless-cri-cgroup"
chown "$user" "/run/user/$uid/.rootless-cri-cgroup"
log "delegated cgroup v2 subtree $sub to $user (controllers: $(cat "$sub/cgroup.controllers" | tr '\n' ' '))"
