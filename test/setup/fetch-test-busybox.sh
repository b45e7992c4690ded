#!/usr/bin/env bash
# Extracts Debian's dynamically linked busybox (package `busybox`, which conflicts with the
# installed busybox-static, so it is unpacked rather than installed) for the test images:
# its shell executes /bin/<applet> like the upstream busybox images do, where
# busybox-static's standalone shell never does (see test/fixtures/image-builder.ts).
# Idempotent; prints the path of the binary.
set -euo pipefail
dest=/var/cache/rootless-cri-test/busybox
if [ ! -x "$dest/bin/busybox" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download busybox >/dev/null 2>&1) || {
    apt-get update -qq >/dev/null && (cd "$work" && apt-get download busybox >/dev/null)
  }
  mkdir -p "$dest"
  dpkg -x "$work"/busybox_*.deb "$work/x"
  install -D -m 0755 "$work/x/bin/busybox" "$dest/bin/busybox"
fi
chmod -R a+rX /var/cache/rootless-cri-test
echo "$dest/bin/busybox"
