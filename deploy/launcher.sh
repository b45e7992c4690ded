#!/bin/sh
# The `rootless-cri` command of an installed app dir (deploy/install.sh copies this file to
# <app>/bin/rootless-cri): runs the CLI on the Node.js the app was installed with (<app>/node,
# a link to the pinned version deploy/install-node.sh installed), whatever `node` is on PATH.
# The daemon the CLI starts inside the node reuses that same binary (process.execPath).
app=$(dirname "$(dirname "$(readlink -f "$0")")")
exec "$app/node/bin/node" "$app/dist/src/cli.js" "$@"
