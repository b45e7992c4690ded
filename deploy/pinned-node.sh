#!/usr/bin/env bash
# Runs the pinned Node.js (deploy/install-node.sh) with these arguments, whatever `node` is on
# PATH; its bin dir goes first on PATH so anything it starts with `node` gets the same one.
# package.json's scripts (`npm run bench`, `npm test`) go through here.
#   deploy/pinned-node.sh SCRIPT.js [ARGS...]
set -euo pipefail
bin=$(bash "$(dirname "$0")/install-node.sh")
export PATH="$bin:$PATH"
exec "$bin/node" "$@"
