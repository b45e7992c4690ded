#!/usr/bin/env bash
# Installs what `npm run bench peer` and `npm run bench containers` run as their peers, from
# Debian 12's packages: containerd (1.6.20), runc and podman (4.3.1) (rootlesskit, slirp4netns,
# socat and the CNI plugins come with deploy/setup-host.sh). Idempotent and quiet; run as root.
# The bench starts its own containerd as the unprivileged bench user under rootlesskit, so the
# package's system service must never run: policy-rc.d refuses every service start while apt
# runs, and where systemd is PID 1 the unit is masked (a containerd that root runs would also
# put a socket in /run/containerd).
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "peer-setup: must run as root" >&2; exit 1; }
missing=()
for p in containerd runc podman; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "peer-setup: installing ${missing[*]}"
  policy=/usr/sbin/policy-rc.d
  ours=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    ours=1
  fi
  trap 'if [ "$ours" = 1 ]; then rm -f "$policy"; fi' EXIT
  export DEBIAN_FRONTEND=noninteractive
  # apt's chatter (debconf notes) only when it fails.
  out=$(mktemp)
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$out" 2>&1; then
    cat "$out" >&2
    rm -f "$out"
    echo "peer-setup: installing ${missing[*]} failed" >&2
    exit 1
  fi
  rm -f "$out"
fi
if [ -d /run/systemd/system ]; then
  systemctl disable --now containerd.service >/dev/null 2>&1 || true
  systemctl mask containerd.service >/dev/null 2>&1 || true
fi
